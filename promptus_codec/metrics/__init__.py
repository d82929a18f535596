"""Picture quality and codec comparison (the ``metrics`` extra). Nothing is imported here.

quality      per-frame PSNR (Y, RGB), MS-SSIM and LPIPS: FrameScores, Scorer
thumbnail    the ReconThumbnail luma fingerprint (spec §6.8.1), numpy only
perceptual   LPIPS nets, refused without their real backbone weights
evaluate     a decoded video against its source: measure, evaluate_files -> EvalResult
baselines    x265, VVenC and SVT-AV1 at a bitrate, with the bitrate they achieved
bdrate       Bjøntegaard delta rate
plots        the rate-distortion plot and frame strips
compare      the `promptus compare` driver
"""
