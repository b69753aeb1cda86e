# Cityscapes on a user's copy ($SMARTBENCH_CITYSCAPES or $SMARTBENCH_DATA/cityscapes; layout in
# bench/data/layouts.py): mmseg's FCN R18-D8 with its packaged Cityscapes pipelines (512x1024 crops).
# Labels are read from the official *_gtFine_labelIds.png and mapped to the 19 train ids in the
# pipeline (CityscapesTrainIds, bench/tasks/segmentation.py). GPU-scale recipe; CI runs it on a
# miniature copy at a small scale (tests/test_fullsize.py).
base = "mmseg::fcn/fcn_r18-d8_4xb2-80k_cityscapes-512x1024.py"

norm_cfg = dict(type="BN", requires_grad=True)  # SyncBN -> BN (DDP users may switch back to SyncBN)
model = dict(
    pretrained=None,  # nothing downloads: no ImageNet weights
    backbone=dict(norm_cfg=norm_cfg, init_cfg=None),
    decode_head=dict(norm_cfg=norm_cfg),
    auxiliary_head=dict(norm_cfg=norm_cfg),
)

crop_size = (512, 1024)
train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations"),
    dict(type="CityscapesTrainIds"),
    dict(type="RandomResize", scale=(2048, 1024), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type="RandomCrop", crop_size=crop_size, cat_max_ratio=0.75),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PhotoMetricDistortion"),
    dict(type="PackSegInputs"),
]
test_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="Resize", scale=(2048, 1024), keep_ratio=True),
    dict(type="LoadAnnotations"),
    dict(type="CityscapesTrainIds"),
    dict(type="PackSegInputs"),
]


def _split(name, pipeline):
    return dict(
        data_root=None,
        data_prefix=dict(img_path=f"leftImg8bit/{name}", seg_map_path=f"gtFine/{name}"),
        seg_map_suffix="_gtFine_labelIds.png",
        pipeline=pipeline,
    )


# an epoch must end: the packaged base config's InfiniteSampler is for its iteration-based loop, ours
# (mmengine's EpochBasedTrainLoop, bench/tasks/mm_common.py) counts epochs
train_dataloader = dict(
    sampler=dict(_delete_=True, type="DefaultSampler", shuffle=True), dataset=_split("train", train_pipeline)
)
val_dataloader = dict(dataset=_split("val", test_pipeline))
test_dataloader = dict(dataset=_split("val", test_pipeline))  # no labelled test split: val
