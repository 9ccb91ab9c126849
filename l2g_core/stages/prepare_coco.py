"""`l2g prepare-coco COCO_ROOT OUT`: MS COCO 2014 instances converted to the VOC layout.

COCO_ROOT holds the official files (annotations/instances_{train,val}2014.json, train2014/,
val2014/). OUT receives JPEGImages/ (symlinks or copies), SegmentationClassAug/ (class-index
PNGs: 0 background, 1..80 in ascending COCO category id, 255 crowd; the smaller instance wins
where instances overlap), ImageSets/Segmentation/{split}.txt and cls_labels.json, the last two
written after every mask. Rerunning skips the masks already written. See l2g_core/data/coco.py.
"""

from l2g_core.data.coco import LINK_MODES, prepare_coco


def configure(parser):
    parser.add_argument("coco_root", help="folder with annotations/, train2014/ and val2014/ of MS COCO 2014")
    parser.add_argument("out", help="output folder (created); receives the VOC layout")
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: all cores)")
    parser.add_argument("--splits", default="train,val",
                        help="comma-separated COCO 2014 splits to convert (default train,val)")
    parser.add_argument("--link", choices=LINK_MODES, default="symlink",
                        help="JPEGImages entries: symlinks to the originals or copies (default symlink)")


def run(args):
    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    labels = prepare_coco(args.coco_root, args.out, splits, args.link, args.workers)
    print(f"wrote {len(labels)} images to {args.out}")
