"""`l2g make-synthetic OUT`: the synthetic demo dataset in the VOC layout."""

from l2g_core.data.synthetic import make_synthetic


def configure(parser):
    parser.add_argument("out", help="output folder (created); receives the VOC layout")
    parser.add_argument("--train", type=int, default=300, help="number of training images (default 300)")
    parser.add_argument("--val", type=int, default=100, help="number of validation images (default 100)")
    parser.add_argument("--size", type=int, default=128, help="image side in pixels (default 128)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed, same bytes (default 0)")
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: all cores)")


def run(args):
    labels = make_synthetic(args.out, args.train, args.val, args.size, args.seed, args.workers)
    print(f"wrote {len(labels)} images to {args.out}")
