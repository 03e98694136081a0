"""The inpainting sampler: data consistency on known pixels, new content in the holes."""
import torch

from models import build_network
from models.diffusion import DiffusionSchedule
from models.difface import DifFace, SamplingConfig, image_generator, known_pixel_correction

TINY_LAMA = dict(input_nc=4, output_nc=3, ngf=16, n_downsampling=2, n_blocks=1, add_out_act="sigmoid",
                 init_conv_kwargs=dict(ratio_gin=0, ratio_gout=0, enable_lfu=False),
                 downsample_conv_kwargs=dict(ratio_gin=0, ratio_gout=0, enable_lfu=False),
                 resnet_conv_kwargs=dict(ratio_gin=0.75, ratio_gout=0.75, enable_lfu=False))
TINY_UNET = dict(image_size=32, in_channels=3, model_channels=32, out_channels=6, num_res_blocks=1,
                 attention_resolutions=[16], channel_mult=[1, 1], num_head_channels=32, use_scale_shift_norm=True)


def _method(size=32, **kwargs) -> DifFace:
    torch.manual_seed(0)
    lama = build_network("lama", TINY_LAMA).eval()
    unet = build_network("unet", TINY_UNET).eval()
    for p in unet.parameters():
        torch.nn.init.normal_(p, std=0.02)
    return DifFace(lama, unet, DiffusionSchedule.from_name(), size, SamplingConfig(start_step=480, steps=4, eta=1.0),
                   correct_x0_factory=known_pixel_correction(0.5, 1), **kwargs)


def _masked_face(h, w):
    y = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(3))
    mask = torch.zeros(1, 1, h, w)
    mask[..., h // 4: h // 2, w // 4: 3 * w // 4] = 1
    return y * (1 - mask), mask


def test_known_pixels_are_kept_exactly_and_holes_are_filled():
    for h, w in [(32, 32), (48, 40)]:  # model size, and a resized (non-square) input
        y, mask = _masked_face(h, w)
        out = _method().restore(y, generator=[image_generator(0, "face")], mask=mask).sample
        known = mask == 0
        assert torch.equal(out.expand_as(y)[known.expand_as(y)], y[known.expand_as(y)])
        hole = mask.bool().expand_as(y)
        assert (out[hole] - y[hole]).abs().mean() > 0.05, "the holes must receive new content"


def test_correction_replaces_known_pixels_of_x0():
    y = torch.rand(1, 3, 8, 8) * 2 - 1
    mask = (torch.rand(1, 1, 8, 8) > 0.5).float()
    x0 = torch.rand(1, 3, 8, 8) * 2 - 1
    corrected = known_pixel_correction(0.5, 1)(y, mask)(x0, 100)
    assert torch.allclose(corrected, x0 * mask + y * (1 - mask))
    untouched = known_pixel_correction(0.0, 1)(y, mask)(x0, 100)
    assert torch.equal(untouched, x0)
