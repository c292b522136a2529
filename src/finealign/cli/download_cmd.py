"""`finealign download flickr8k|flickr30k|coco|msrvtt --root DIR [--dry-run]`."""

from __future__ import annotations

import argparse
from collections.abc import Iterator


class _Recipes:
    """The datasets with a download recipe, read when argparse checks or lists them (importing
    finealign.data imports torch: `finealign --help` and completion must not pay for it)."""

    def names(self) -> list[str]:
        from finealign.data.download import PLANS

        return sorted(PLANS)

    def __contains__(self, name: object) -> bool:
        return name in self.names()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", choices=_Recipes(), metavar="DATASET", help="flickr8k, flickr30k, coco or msrvtt")
    parser.add_argument("--root", required=True, help="folder for this dataset (e.g. data/flickr8k)")
    parser.add_argument("--dry-run", action="store_true", help="only print what goes where")
    parser.add_argument("--keep-archives", action="store_true", help="keep downloaded zip files")


def run(args: argparse.Namespace) -> int:
    from finealign.data.download import download, download_plan

    if args.dry_run:
        print(download_plan(args.dataset, args.root).describe())
        return 0
    plan = download(args.dataset, args.root, keep_archives=args.keep_archives)
    print(plan.describe())
    if plan.manual:
        print("\nThe public files are in place; finish the steps 'To do by hand' above.")
    return 0
