"""BNext detectors: architecture, extra channels against OpenCV/scikit-image, the authors'
Lightning checkpoints, restricted loading, preprocessing and the weights CLI."""

from __future__ import annotations

import collections
import functools
import os
import sys
import types
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data, feature

from deepfake_toolkit.cli import main
from deepfake_toolkit.models import (
    UnsafeCheckpointError,
    WeightsFileError,
    WeightsMismatchError,
    WeightsNotFoundError,
    get_spec,
    import_weights,
    load_model,
)
from deepfake_toolkit.models.bnext import (
    DETECTOR_PARAMETERS,
    BNextDeepfakeDetector,
    count_parameters,
    extra_channels,
    fft_channel,
    lbp_channel,
    opencv_grey,
    rgb_to_uint8,
)
from deepfake_toolkit.models.transforms import ImageTransform

FFT_TOLERANCE = 1e-5
"""Largest accepted |ours - NumPy| in the FFT channel (values span about -1.6..1.3) wherever the
spectrum is not zero; on the real and random images below the channels are bit-identical."""

FFT_NOISE_FLOOR = 20 * np.log(1e-3) / 255
"""Channel value of a spectrum magnitude of 1e-3. Below it a bin is zero up to rounding (e.g. an
image made of 8x8 blocks): both libraries then return the log of their own rounding noise."""


pytestmark = pytest.mark.usefixtures("one_torch_thread", "no_project_weights")


@pytest.mark.parametrize("size, paper_millions", [("T", 29.8), ("S", 67.1), ("M", 133.0)])
def test_parameter_counts_match_the_paper(size: str, paper_millions: float) -> None:
    counted = count_parameters(size)
    assert abs(counted / 1e6 - paper_millions) / paper_millions < 0.02
    assert counted == DETECTOR_PARAMETERS[size]


def test_state_dict_follows_the_authors_key_layout() -> None:
    with torch.device("meta"):
        state = BNextDeepfakeDetector("T").state_dict()
    shapes = {key: tuple(value.shape) for key, value in state.items()}
    assert {key.split(".")[0] for key in shapes} == {"base_model", "adapter", "fc"}
    assert shapes["adapter.weight"] == (3, 5, 3, 3) and shapes["fc.weight"] == (1, 1024)
    for key in ("base_model.feature.0.conv1.weight", "base_model.feature.0.prelu.weight",
                "base_model.feature.1.Attention.move.bias",
                "base_model.feature.1.Attention.binary_activation.temperature",
                "base_model.feature.1.Attention.binary_conv.temperature",
                "base_model.feature.1.FFN_1.se.se.1.weight", "base_model.feature.3.FFN.scale",
                "base_model.feature.2.Attention.activation1.weight", "base_model.prelu.weight"):
        assert key in shapes, key
    assert not any(key.startswith("base_model.fc.") for key in shapes)


def reference_extra_channels(image: np.ndarray) -> np.ndarray:
    """Upstream's per-image NumPy/OpenCV/scikit-image code, for an HWC float32 RGB image."""
    grey = cv2.cvtColor((image * 255).astype(np.uint8), cv2.COLOR_BGR2GRAY)
    fft = 20 * np.log(np.abs(np.fft.fftshift(np.fft.fft2(grey))) + 1e-9)
    lbp = feature.local_binary_pattern(grey, 3, 6, method="uniform")
    return (np.stack([fft, lbp], axis=2) / 255).astype(np.float32)


def test_grey_equals_opencv_for_every_8bit_colour() -> None:
    levels = np.arange(256, dtype=np.uint8)
    red, green, blue = np.meshgrid(levels, levels, levels, indexing="ij")
    every_colour = np.stack([red, green, blue], axis=-1).reshape(4096, 4096, 3)
    ours = opencv_grey(torch.from_numpy(every_colour).permute(2, 0, 1)[None])[0].numpy()
    np.testing.assert_array_equal(ours, cv2.cvtColor(every_colour, cv2.COLOR_BGR2GRAY))


@functools.cache
def _test_images() -> list[np.ndarray]:
    """Real photos (224 px, as the model sees them), random noise, odd sizes, flat areas."""
    real = [data.astronaut(), data.coffee(), data.chelsea(), np.stack([data.camera()] * 3, -1)]
    transform = ImageTransform(get_spec("bnext_m_dffd").preprocess)
    images = [np.asarray(transform.resize(Image.fromarray(photo))) for photo in real]
    rng = np.random.default_rng(7)
    images += [rng.integers(0, 256, (224, 224, 3), dtype=np.uint8) for _ in range(3)]
    images += [rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)]
    blocky = np.kron(rng.integers(0, 256, (28, 28, 3)), np.ones((8, 8, 1))).astype(np.uint8)
    return images + [blocky]


@pytest.mark.parametrize("index", range(9))
def test_extra_channels_match_opencv_and_scikit_image(index: int) -> None:
    image = _test_images()[index]
    as_float = image.astype(np.float32) / 255
    expected = reference_extra_channels(as_float)
    ours = extra_channels(torch.from_numpy(as_float).permute(2, 0, 1)[None])[0]
    ours = ours.permute(1, 2, 0).numpy()
    assert ours.dtype == np.float32 and ours.shape == expected.shape
    np.testing.assert_array_equal(ours[..., 1], expected[..., 1])
    signal = expected[..., 0] > FFT_NOISE_FLOOR
    assert np.abs(ours[..., 0] - expected[..., 0])[signal].max() <= FFT_TOLERANCE
    assert (ours[..., 0][~signal] <= FFT_NOISE_FLOOR + FFT_TOLERANCE).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_extra_channels_on_cuda_match_the_reference() -> None:
    images = _test_images()[:7]
    batch = torch.from_numpy(np.stack(images).astype(np.float32) / 255).permute(0, 3, 1, 2)
    ours = extra_channels(batch.cuda())
    assert ours.is_cuda
    ours = ours.cpu().permute(0, 2, 3, 1).numpy()
    for index, image in enumerate(images):
        expected = reference_extra_channels(image.astype(np.float32) / 255)
        np.testing.assert_array_equal(ours[index, ..., 1], expected[..., 1])
        signal = expected[..., 0] > FFT_NOISE_FLOOR
        assert np.abs(ours[index, ..., 0] - expected[..., 0])[signal].max() <= FFT_TOLERANCE


def test_channels_are_batched_and_independent_of_batch_neighbours() -> None:
    images = [image[:96, :112] for image in _test_images()[2:6]]
    batch = torch.from_numpy(np.stack(images).astype(np.float32) / 255).permute(0, 3, 1, 2)
    together = extra_channels(batch)
    alone = torch.cat([extra_channels(batch[i:i + 1]) for i in range(len(batch))])
    torch.testing.assert_close(together, alone, rtol=0, atol=0)
    grey = opencv_grey(rgb_to_uint8(batch))
    assert fft_channel(grey).shape == lbp_channel(grey).shape == (4, 96, 112)


def test_lbp_of_other_radii_matches_scikit_image() -> None:
    grey = np.random.default_rng(3).integers(0, 256, (40, 50), dtype=np.uint8)
    for points, radius in ((8, 1.0), (4, 2.5), (3, 6.0)):
        ours = lbp_channel(torch.from_numpy(grey)[None], points, radius)[0].numpy()
        expected = feature.local_binary_pattern(grey, points, radius, method="uniform")
        np.testing.assert_array_equal(ours, expected)


def test_preprocessing_equals_the_authors_torchvision_transform() -> None:
    from torchvision import transforms as T

    reference = T.Compose([T.Resize(252, interpolation=T.InterpolationMode.BILINEAR),
                           T.CenterCrop(224), T.ToTensor()])
    transform = ImageTransform(get_spec("bnext_s_cocofake").preprocess)
    for photo in (data.astronaut(), data.coffee(), data.camera()):
        image = Image.fromarray(photo).convert("RGB")
        torch.testing.assert_close(transform(image), reference(image), rtol=0, atol=0)


@pytest.fixture()
def lightning_attribute_dict(monkeypatch: pytest.MonkeyPatch) -> type:
    """Lightning's AttributeDict, importable under its real module name so that pickle writes the
    same GLOBAL as a real Lightning checkpoint (Lightning itself is not a dependency)."""

    class AttributeDict(dict):
        pass

    AttributeDict.__module__ = "lightning.fabric.utilities.data"
    AttributeDict.__qualname__ = "AttributeDict"
    module = types.ModuleType(AttributeDict.__module__)
    module.AttributeDict = AttributeDict
    for name in ("lightning", "lightning.fabric", "lightning.fabric.utilities"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, AttributeDict.__module__, module)
    return AttributeDict


def trained_like_bnext_t() -> BNextDeepfakeDetector:
    """A BNext-T detector in the state training leaves: binarised convs (temperature ~0), random
    batch-norm statistics and mixing scales."""
    torch.manual_seed(0)
    model = BNextDeepfakeDetector("T")
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if name.endswith("binary_conv.temperature"):
                buffer.fill_(1e-8)
            elif name.endswith("running_mean"):
                buffer.normal_(0, 0.1)
            elif name.endswith("running_var"):
                buffer.uniform_(0.5, 2.0)
        for name, parameter in model.named_parameters():
            if name.endswith(".scale"):
                parameter.uniform_(0.2, 0.8)
    return model.eval()


def write_lightning_checkpoint(path: Path, model: BNextDeepfakeDetector, attribute_dict: type,
                               backbone: str = "BNext-T") -> Path:
    """Save ``model`` the way PyTorch Lightning 2.x saves BNext4DFR (trainer state included)."""
    # The optimizer covers the adapter and head only (as in the authors' frozen-backbone runs)
    # to keep the file small; one step with zero gradients fills AdamW's per-parameter state.
    trained = [*model.adapter.parameters(), *model.fc.parameters()]
    optimizer = torch.optim.AdamW(trained, lr=1e-4)
    scheduler = torch.optim.lr_scheduler.LinearLR(optimizer, 1.0, 0.1, total_iters=5)
    for parameter in trained:
        parameter.grad = torch.zeros_like(parameter)
    optimizer.step()
    scheduler.step()
    model.zero_grad(set_to_none=True)
    score = torch.tensor(0.92)
    checkpoint = {
        "epoch": 4,
        "global_step": 1234,
        "pytorch-lightning_version": "2.2.1",
        "state_dict": collections.OrderedDict(model.state_dict()),
        "loops": {"fit_loop": {"state_dict": {},
                               "epoch_loop.state_dict": {"_batches_that_stepped": 1234},
                               "epoch_progress": {"total": {"ready": 5, "completed": 5}}}},
        "callbacks": {"ModelCheckpoint{'monitor': 'val_acc', 'mode': 'max'}": {
            "monitor": "val_acc", "best_model_score": score, "current_score": score,
            "best_model_path": "checkpoints/epoch=4.ckpt", "dirpath": "checkpoints",
            "best_k_models": {"checkpoints/epoch=4.ckpt": score}, "kth_value": score,
            "kth_best_model_path": "checkpoints/epoch=4.ckpt", "last_model_path": ""}},
        "optimizer_states": [optimizer.state_dict()],
        "lr_schedulers": [scheduler.state_dict()],
        "MixedPrecision": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5,
                           "growth_interval": 2000, "_growth_tracker": 0},
        "hparams_name": "kwargs",
        "hyper_parameters": attribute_dict(
            num_classes=2, backbone=backbone, freeze_backbone=False,
            add_magnitude_channel=False, add_fft_channel=True, add_lbp_channel=True,
            learning_rate=1e-4, pos_weight=1.0),
    }
    torch.save(checkpoint, path)
    return path


@pytest.fixture()
def authors_checkpoint(tmp_path: Path, lightning_attribute_dict: type
                       ) -> tuple[Path, BNextDeepfakeDetector]:
    """A weights folder holding dffd_T_unfrozen.ckpt in the authors' layout, and its model."""
    folder = tmp_path / "weights"
    folder.mkdir()
    model = trained_like_bnext_t()
    write_lightning_checkpoint(folder / "dffd_T_unfrozen.ckpt", model, lightning_attribute_dict)
    return folder, model


def test_authors_checkpoint_loads_as_it_is_and_gives_the_same_outputs(
        authors_checkpoint: tuple[Path, BNextDeepfakeDetector]) -> None:
    folder, model = authors_checkpoint
    detector = load_model("bnext_t_dffd", weights_dir=folder, device="cpu")
    assert detector.weights_path.name == "dffd_T_unfrozen.ckpt"
    batch = torch.rand(2, 3, 96, 96)
    with torch.inference_mode():
        expected = model(batch)
        torch.testing.assert_close(detector.module(batch), expected, rtol=0, atol=1e-6)
    # sigmoid of the logit is P(real); fake_score is its complement.
    torch.testing.assert_close(torch.from_numpy(detector.predict(batch)).float(),
                               1 - torch.sigmoid(expected[:, 0]), rtol=0, atol=1e-6)


def test_import_converts_the_checkpoint_to_safetensors_with_the_same_outputs(
        authors_checkpoint: tuple[Path, BNextDeepfakeDetector], tmp_path: Path) -> None:
    folder, model = authors_checkpoint
    installed = import_weights(folder / "dffd_T_unfrozen.ckpt", "bnext_t_dffd", folder)
    assert installed == folder / "bnext_t_dffd.safetensors"
    detector = load_model("bnext_t_dffd", weights_dir=folder, device="cpu")
    assert detector.weights_path == installed
    batch = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(detector.module(batch), model(batch), rtol=0, atol=1e-6)
    with pytest.raises(FileExistsError):
        import_weights(folder / "dffd_T_unfrozen.ckpt", "bnext_t_dffd", folder)


def test_checkpoint_of_another_size_is_refused_with_its_backbone_named(
        tmp_path: Path, lightning_attribute_dict: type) -> None:
    write_lightning_checkpoint(tmp_path / "dffd_T_unfrozen.ckpt", trained_like_bnext_t(),
                               lightning_attribute_dict, backbone="BNext-S")
    with pytest.raises(WeightsMismatchError, match="BNext-S"):
        load_model("bnext_t_dffd", weights_dir=tmp_path, device="cpu")


def test_keys_that_do_not_fit_are_listed(tmp_path: Path, lightning_attribute_dict: type) -> None:
    write_lightning_checkpoint(tmp_path / "dffd_M_unfrozen.ckpt", trained_like_bnext_t(),
                               lightning_attribute_dict, backbone="BNext-M")
    with pytest.raises(WeightsMismatchError) as error:
        load_model("bnext_m_dffd", weights_dir=tmp_path, device="cpu")
    message = str(error.value)
    assert "dffd_M_unfrozen.ckpt" in message
    for part in ("missing keys: base_model.feature.", "unexpected keys: base_model.feature.",
                 "wrong shape keys: base_model.feature.0.bn1.bias: file (32,) vs model (48,)"):
        assert part in message


def test_pickled_checkpoint_with_code_is_refused_and_the_code_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"

    class Payload:
        def __reduce__(self) -> tuple:
            return (os.mkdir, (str(marker),))

    torch.save({"state_dict": {}, "payload": Payload()}, tmp_path / "dffd_T_unfrozen.ckpt")
    with pytest.raises(UnsafeCheckpointError, match=r"posix\.mkdir|nt\.mkdir"):
        load_model("bnext_t_dffd", weights_dir=tmp_path, device="cpu")
    assert not marker.exists()


def test_a_saved_web_page_is_recognised(tmp_path: Path) -> None:
    (tmp_path / "dffd_T_unfrozen.ckpt").write_text("<!DOCTYPE html><html>Google Drive</html>")
    with pytest.raises(WeightsFileError, match="web page"):
        load_model("bnext_t_dffd", weights_dir=tmp_path, device="cpu")


def test_missing_weights_say_what_to_download_and_where(tmp_path: Path) -> None:
    with pytest.raises(WeightsNotFoundError) as error:
        load_model("bnext_m_dffd", weights_dir=tmp_path, device="cpu")
    message = str(error.value)
    for fact in ("dffd_M_unfrozen.ckpt", "bnext_m_dffd.safetensors", str(tmp_path),
                 "https://drive.google.com/file/d/16c5xIDvwN3DUD6JbO_cl7aj_xrijezWs",
                 "deepfake-toolkit weights import dffd_M_unfrozen.ckpt --model bnext_m_dffd"):
        assert fact in message
    with pytest.raises(WeightsNotFoundError, match="1rYtfozcq5eXK1a8tP8ouXrBFZs1e72dV"):
        load_model("bnext_s_cocofake", weights_dir=tmp_path, device="cpu")


def test_weights_cli_lists_and_imports(authors_checkpoint: tuple[Path, BNextDeepfakeDetector],
                                       tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder, _ = authors_checkpoint
    target = tmp_path / "installed"
    assert main(["weights", "--weights-dir", str(target)]) == 0
    listing = capsys.readouterr().out
    assert "bnext_t_dffd" in listing and "dffd_T_unfrozen.ckpt" in listing
    assert "16c5xIDvwN3DUD6JbO_cl7aj_xrijezWs" in listing and str(target) in listing
    assert main(["weights", "import", str(folder / "dffd_T_unfrozen.ckpt"), "--model",
                 "bnext_t_dffd", "--weights-dir", str(target)]) == 0
    assert (target / "bnext_t_dffd.safetensors").is_file()
    capsys.readouterr()
    assert main(["weights", "--weights-dir", str(target)]) == 0
    present = [line for line in capsys.readouterr().out.splitlines()
               if line.startswith("bnext_t_dffd ")]
    assert present and "present" in present[0]
    assert main(["weights", "import", str(tmp_path / "absent.ckpt"), "--model",
                 "bnext_t_dffd", "--weights-dir", str(target)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_classify_with_the_authors_file_dropped_in(
        authors_checkpoint: tuple[Path, BNextDeepfakeDetector], tmp_path: Path,
        astronaut: Image.Image, no_face_image: Image.Image) -> None:
    import pandas as pd

    folder, _ = authors_checkpoint
    images = tmp_path / "images"
    images.mkdir()
    astronaut.save(images / "astronaut.png")
    no_face_image.save(images / "coffee.jpg")
    output = tmp_path / "scores.csv"
    assert main(["classify", str(images), "-m", "bnext_t_dffd", "--weights-dir", str(folder),
                 "--no-face-crop", "--device", "cpu", "--workers", "0", "--quiet",
                 "-o", str(output)]) == 0
    scores = pd.read_csv(output)
    assert len(scores) == 2 and scores["fake_score"].between(0, 1).all()


def test_checkpoint_written_by_real_lightning_loads_restricted(tmp_path: Path) -> None:
    """A checkpoint written by PyTorch Lightning itself (trainer, optimizer, scheduler and
    ModelCheckpoint state, save_hyperparameters as in BNext4DFR) loads as it is."""
    lightning = pytest.importorskip("lightning")
    from torch.utils.data import DataLoader, TensorDataset

    class LightningBNext(BNextDeepfakeDetector, lightning.LightningModule):
        def __init__(self, num_classes: int = 2, backbone: str = "BNext-T",
                     freeze_backbone: bool = False, add_magnitude_channel: bool = False,
                     add_fft_channel: bool = True, add_lbp_channel: bool = True,
                     learning_rate: float = 1e-4, pos_weight: float = 1.0) -> None:
            super().__init__(backbone[-1])
            self.save_hyperparameters()

        def training_step(self, batch: list[torch.Tensor], index: int) -> torch.Tensor:
            images, is_real = batch
            loss = torch.nn.functional.binary_cross_entropy_with_logits(self(images)[:, 0],
                                                                        is_real)
            self.log("train_loss", loss)
            return loss

        def configure_optimizers(self) -> tuple[list, list]:
            optimizer = torch.optim.AdamW(self.parameters(), lr=self.hparams.learning_rate)
            return [optimizer], [torch.optim.lr_scheduler.LinearLR(optimizer, 1.0, 0.1, 5)]

    torch.manual_seed(0)
    module = LightningBNext()
    folder = tmp_path / "weights"
    checkpoints = lightning.pytorch.callbacks.ModelCheckpoint(
        dirpath=folder, filename="dffd_T_unfrozen", monitor="train_loss", mode="min")
    trainer = lightning.Trainer(max_steps=1, logger=False, enable_progress_bar=False,
                                enable_model_summary=False, default_root_dir=tmp_path,
                                callbacks=[checkpoints], accelerator="cpu")
    data = TensorDataset(torch.rand(2, 3, 64, 64), torch.tensor([0.0, 1.0]))
    trainer.fit(module, DataLoader(data, batch_size=2))
    assert (folder / "dffd_T_unfrozen.ckpt").is_file()

    detector = load_model("bnext_t_dffd", weights_dir=folder, device="cpu")
    batch = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(detector.module(batch), module.eval()(batch), rtol=0,
                                   atol=1e-6)
