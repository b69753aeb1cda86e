# FMNIST-Scenes detection (bench/data/scenes.py writes coco/): mmdet's RetinaNet R18-FPN, 64x64 images.
# Merged onto the package config named by `base` (bench/tasks/mm_common.py: load_config); data_root,
# class names and the batch size are set by the task at run time. See docs/mm.md for every change.
base = "mmdet::retinanet/retinanet_r18_fpn_1x_coco.py"

model = dict(
    backbone=dict(
        init_cfg=None,  # no ImageNet weights: nothing downloads, trained from scratch
        frozen_stages=-1,  # from scratch: train the stem and stage 1 too
        norm_eval=False,  # ... and update BN statistics
    ),
    # narrow FPN and head (128 instead of 256 channels): 2.3x fewer FLOPs, so the tiny task fits its CPU budget
    neck=dict(out_channels=128),
    bbox_head=dict(
        in_channels=128,
        feat_channels=128,
        num_classes=10,
        # objects are 8..36 px on 64x64 scenes: anchors 16..25 px on P3 (stride 8) instead of 32..50
        anchor_generator=dict(octave_base_scale=2),
    ),
)

# Resize to the image's own size: a no-op that records scale_factor, which PackDetInputs/predict need.
train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations", with_bbox=True),
    dict(type="Resize", scale=(64, 64), keep_ratio=True),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PackDetInputs"),
]
test_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="Resize", scale=(64, 64), keep_ratio=True),
    dict(type="LoadAnnotations", with_bbox=True),
    dict(type="PackDetInputs", meta_keys=("img_id", "img_path", "ori_shape", "img_shape", "scale_factor")),
]


def _split(name, pipeline, test_mode):
    return dict(
        type="CocoDataset",
        data_root=None,
        ann_file=f"coco/annotations/instances_{name}.json",
        data_prefix=dict(img=f"coco/{name}/"),
        filter_cfg=None if test_mode else dict(filter_empty_gt=True, min_size=0),
        test_mode=test_mode,
        serialize_data=False,  # num_workers=0: nothing to share; skips a gc.collect() per dataset
        pipeline=pipeline,
    )


train_dataloader = dict(
    batch_size=16,
    num_workers=0,
    persistent_workers=False,
    dataset=_split("train", train_pipeline, False),
)
val_dataloader = dict(
    batch_size=32,
    num_workers=0,
    persistent_workers=False,
    dataset=_split("val", test_pipeline, True),
)
test_dataloader = dict(
    batch_size=32,
    num_workers=0,
    persistent_workers=False,
    dataset=_split("test", test_pipeline, True),
)
val_evaluator = dict(type="CocoMetric", ann_file="coco/annotations/instances_val.json", metric="bbox", format_only=False)
test_evaluator = dict(type="CocoMetric", ann_file="coco/annotations/instances_test.json", metric="bbox", format_only=False)
