# ADE20K (SceneParsing) on a user's copy ($SMARTBENCH_ADE20K or $SMARTBENCH_DATA/ADEChallengeData2016;
# layout in bench/data/layouts.py): mmseg's FCN R18-D8 (the packaged R18 config, whose data part is
# Cityscapes) with the dataset and pipelines of mmseg's packaged ADE20K configs, 512x512 crops,
# 150 classes (label 0 = "other" is ignored: reduce_zero_label). GPU-scale recipe; CI runs it on a
# miniature copy at a small scale (tests/test_fullsize.py).
base = "mmseg::fcn/fcn_r18-d8_4xb2-80k_cityscapes-512x1024.py"

norm_cfg = dict(type="BN", requires_grad=True)  # SyncBN -> BN (DDP users may switch back to SyncBN)
crop_size = (512, 512)
model = dict(
    pretrained=None,  # nothing downloads: no ImageNet weights
    data_preprocessor=dict(size=crop_size),
    backbone=dict(norm_cfg=norm_cfg, init_cfg=None),
    decode_head=dict(norm_cfg=norm_cfg, num_classes=150),
    auxiliary_head=dict(norm_cfg=norm_cfg, num_classes=150),
)

train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations"),  # reduce_zero_label comes from ADE20KDataset (True)
    dict(type="RandomResize", scale=(2048, 512), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type="RandomCrop", crop_size=crop_size, cat_max_ratio=0.75),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PhotoMetricDistortion"),
    dict(type="PackSegInputs"),
]
test_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="Resize", scale=(2048, 512), keep_ratio=True),
    dict(type="LoadAnnotations"),  # reduce_zero_label comes from ADE20KDataset (True)
    dict(type="PackSegInputs"),
]


def _split(name, pipeline):
    return dict(
        _delete_=True,
        type="ADE20KDataset",
        data_root=None,
        data_prefix=dict(img_path=f"images/{name}", seg_map_path=f"annotations/{name}"),
        pipeline=pipeline,
    )


# an epoch must end: the packaged base config's InfiniteSampler is for its iteration-based loop, ours
# (mmengine's EpochBasedTrainLoop, bench/tasks/mm_common.py) counts epochs
train_dataloader = dict(
    sampler=dict(_delete_=True, type="DefaultSampler", shuffle=True), dataset=_split("training", train_pipeline)
)
val_dataloader = dict(dataset=_split("validation", test_pipeline))
test_dataloader = dict(dataset=_split("validation", test_pipeline))  # no labelled test split: validation
