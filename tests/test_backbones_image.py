import pytest
import torch

from transfuse.backbones import create_backbone
from transfuse.errors import UserError


def test_unknown_names_list_valid_sources_and_names():
    with pytest.raises(UserError, match=r"unknown backbone 'bundled:nope'; valid names: .*bundled:efficientnet_lite0"):
        create_backbone("bundled:nope")
    with pytest.raises(UserError, match=r"unknown source 'foo'; valid sources: .*bundled.*timm"):
        create_backbone("foo:bar")
    with pytest.raises(UserError, match=r"give SOURCE:NAME"):
        create_backbone("efficientnet")


@pytest.mark.real
def test_efficientnet_lite0_key_map_reproduces_imagenet_predictions():
    """Scikit-image's cat photo: top-5 ImageNet classes 282, 285, 281, 287, 904 (tabby, Egyptian
    cat, tiger cat, lynx, window screen) with timm's own eval transform."""
    from PIL import Image
    from skimage import data
    from timm.data import create_transform, resolve_data_config

    from transfuse.backbones.efficientnet import imagenet_model

    m = imagenet_model(0)
    x = create_transform(**resolve_data_config({}, model=m))(Image.fromarray(data.chelsea()))
    with torch.no_grad():
        top = m(x[None]).softmax(-1).topk(5).indices[0].tolist()
    assert top == [282, 285, 281, 287, 904]


@pytest.mark.real
def test_bundled_backbone_interface():
    b = create_backbone("bundled:efficientnet_lite0", image_size=96)
    assert b.feature_dim == 1280 and b.modality == "image"
    pre = b.preprocess_config()
    assert pre["input_size"] == [3, 96, 96] and pre["mean"] == [0.5, 0.5, 0.5]
    assert pre["interpolation"] == "bicubic"
    # the classifier is gone: features, not logits
    with torch.no_grad():
        assert b(torch.zeros(2, 3, 96, 96)).shape == (2, 1280)
    # layer-wise lr decay: stem gets lr * decay**top, the last layer gets lr
    groups = b.param_groups(1e-3, layer_decay=0.5)
    top = max(g["layer_id"] for g in groups)
    assert top == len(groups) - 1
    for g in groups:
        assert g["lr"] == pytest.approx(1e-3 * 0.5 ** (top - g["layer_id"]))
    # the key is stable and depends on preprocessing
    assert b.cache_key() == create_backbone("bundled:efficientnet_lite0", image_size=96).cache_key()
    assert b.cache_key() != create_backbone("bundled:efficientnet_lite0", image_size=128).cache_key()


def test_file_source_loads_safetensors_and_refuses_pickles(tmp_path):
    import timm
    from safetensors.torch import save_file

    m = timm.create_model("resnet18", pretrained=False, num_classes=5)
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(path))
    b = create_backbone(f"file:{path}", arch="resnet18")
    x = torch.randn(1, 3, 64, 64)
    m.eval(); b.eval()
    with torch.no_grad():
        assert torch.allclose(b(x), m.forward_head(m.forward_features(x), pre_logits=True), atol=1e-5)
    with pytest.raises(UserError, match="name its architecture"):
        create_backbone(f"file:{path}")

    class Evil:
        def __reduce__(self):
            return (print, ("code ran",))

    bad = tmp_path / "evil.pth"
    torch.save({"x": Evil()}, bad)
    with pytest.raises(UserError, match="cannot be read safely"):
        create_backbone(f"file:{bad}", arch="resnet18")


def test_taps_pool_the_last_stages_before_the_plain_features():
    """``taps: 3`` on EfficientNet-Lite0: the mean-pooled outputs of its last three block stages
    (112, 192 and 320 channels), then the plain 1280 features, exactly; forward hooks on those
    stages compute the same columns independently."""
    plain = create_backbone("bundled:efficientnet_lite0", image_size=64)
    tapped = create_backbone("bundled:efficientnet_lite0", image_size=64, taps=3)
    view = plain.tapped(3)  # the same network, not a copy
    assert tapped.feature_dim == view.feature_dim == 112 + 192 + 320 + 1280
    assert view.model is plain.model and view.weights_hash() == plain.weights_hash() == tapped.weights_hash()
    assert tapped.cache_key() == view.cache_key() != plain.cache_key()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    seen: list[torch.Tensor] = []
    hooks = [plain.model.blocks[i].register_forward_hook(lambda m, i, o: seen.append(o.mean((2, 3))))
             for i in (4, 5, 6)]
    with torch.no_grad():
        f = plain(x)
        for h in hooks:
            h.remove()
        ft, fv = tapped(x), view(x)
    assert torch.equal(ft, fv) and torch.equal(ft[:, -1280:], f)
    assert torch.equal(ft[:, :-1280], torch.cat(seen, 1))
    with pytest.raises(UserError) as e:
        create_backbone("bundled:efficientnet_lite0", taps=8)
    assert str(e.value) == ("backbone option taps=8: EfficientNet has 7 stages after its stem; give taps "
                            "between 1 and 7")
    with pytest.raises(UserError) as e:
        create_backbone("bundled:efficientnet_lite0", taps=-1)
    assert str(e.value) == "backbone option taps=-1: give a number of stages >= 0 (0: the plain features)"
    with pytest.raises(UserError) as e:  # a typo is refused, not ignored
        create_backbone("bundled:efficientnet_lite0", tap=3, n=1)
    assert str(e.value) == ("backbone bundled:efficientnet_lite0: unknown option(s) n, tap; valid options: "
                            "image_size, scales, taps")


def test_scales_concatenate_each_sizes_features_stages_first():
    """``scales: [48, 96]`` at 64 px: the plain features of the input resized (bilinear) to 48 and
    96 px, then of the input itself, computed independently by a plain backbone; with ``taps`` all
    sizes' stage features come first, so the tapped view still ends with the untapped features.
    Refused: partial fine-tuning, and sizes that are not distinct, in range, or the own size."""
    import torch.nn.functional as F

    from transfuse.backbones.split import split_backbone

    plain = create_backbone("bundled:efficientnet_lite0", image_size=64)
    multi = create_backbone("bundled:efficientnet_lite0", image_size=64, scales=[48, 96])
    view = multi.tapped(3)
    assert multi.feature_dim == 3 * 1280 and view.feature_dim == 3 * (112 + 192 + 320 + 1280)
    assert len({plain.cache_key(), multi.cache_key(), view.cache_key()}) == 3
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    tapped = plain.tapped(3)
    with torch.no_grad():
        sized = [F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False) for s in (48, 96)] + [x]
        ref = torch.cat([plain(t) for t in sized], 1)
        ref_tapped = [tapped(t) for t in sized]
        fm, fv = multi(x), view(x)
    torch.testing.assert_close(fm, ref, rtol=0, atol=1e-6)
    torch.testing.assert_close(fv, torch.cat([t[:, :-1280] for t in ref_tapped] + [t[:, -1280:] for t in ref_tapped], 1),
                               rtol=0, atol=1e-6)
    assert torch.equal(fv[:, -multi.feature_dim:], fm)
    with pytest.raises(UserError) as e:
        split_backbone(multi, 1)
    assert str(e.value) == ("backbone bundled:efficientnet_lite0: partial fine-tuning cannot split a backbone with "
                            "the scales option (each size runs the whole network); leave scales out, or use "
                            "'finetune' or 'lp_ft'")
    for bad in ([64], [48, 48], [16], [2048], "128", [True]):
        with pytest.raises(UserError) as e:
            create_backbone("bundled:efficientnet_lite0", image_size=64, scales=bad)
        assert str(e.value) == (f"backbone option scales={bad!r}: give a list of distinct input sizes from 32 to "
                                "1024 px other than the backbone's own 64, e.g. scales: [128, 320]")


def test_a_plain_backbones_tapped_view_takes_scales_as_if_built_with_them():
    """``multilayer_probe``'s view with ``adapt.scales``: ``plain.tapped(3, [48, 96])`` shares the
    plain network and computes what ``taps=3, scales=[48, 96]`` built from the options computes
    (same cache key, so a served candidate rebuilt from its options reads the same features); a
    backbone with its own scales keeps them. ``scale_sizes``: relative factors to pixel sizes in
    range, other than the own size, each once."""
    from transfuse.backbones.timm_source import scale_sizes

    plain = create_backbone("bundled:efficientnet_lite0", image_size=64)
    view = plain.tapped(3, [48, 96])
    built = create_backbone("bundled:efficientnet_lite0", image_size=64, taps=3, scales=[48, 96])
    assert view.model is plain.model and view.cache_key() == built.cache_key()
    assert view.preprocess_config() == built.preprocess_config()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(view(x), built(x), rtol=0, atol=1e-6)
    own = create_backbone("bundled:efficientnet_lite0", image_size=64, scales=[96])
    assert own.tapped(3, [48]).scales == (96,)
    assert scale_sizes([0.57, 1.43], 224) == [128, 320]
    assert scale_sizes([0.57, 1.43], 160) == [91, 229]
    assert scale_sizes([0.57, 1.43], 32) == [46]  # 18 px is below 32
    assert scale_sizes([0.5, 0.505, 1.002, 1.5], 224) == [112, 113, 336]  # 224.4: its own size
    assert scale_sizes([0.5, 0.501, 1.002], 224) == [112]  # 112.2 rounds onto 112: once


def test_finetune_options_move_only_image_backbones_that_follow_the_run_size():
    from transfuse.backbones.registry import finetune_options

    assert finetune_options({}, "image", 224, 112) == {"image_size": 112}
    assert finetune_options({"taps": 0}, "image", None, 112) == {"taps": 0, "image_size": 112}
    assert finetune_options({"image_size": 160}, "image", 224, 112) is None  # its own size stays
    assert finetune_options({}, "image", 224, None) is None
    assert finetune_options({}, "image", 112, 112) is None  # the run's size already
    assert finetune_options({}, "text", None, 112) is None
