# COCO 2017 detection on a user's copy ($SMARTBENCH_COCO or $SMARTBENCH_DATA/coco; layout in
# bench/data/layouts.py): mmdet's RetinaNet R18-FPN with its packaged COCO pipelines (1333x800).
# GPU-scale recipe; CI runs it on a miniature copy at a small scale (tests/test_fullsize.py). data_root is bound at run time; ann_file paths are relative to it.
base = "mmdet::retinanet/retinanet_r18_fpn_1x_coco.py"

model = dict(
    # nothing downloads: no ImageNet weights (point init_cfg at a local checkpoint file to use one)
    backbone=dict(init_cfg=None, frozen_stages=-1, norm_eval=False),
)

train_dataloader = dict(dataset=dict(data_root=None))
val_dataloader = dict(dataset=dict(data_root=None))
test_dataloader = dict(dataset=dict(data_root=None))  # COCO has no labelled test split: val2017
val_evaluator = dict(ann_file="annotations/instances_val2017.json")
test_evaluator = dict(ann_file="annotations/instances_val2017.json")
