"""Vision warm-up: per-token probe training moves only the vision tower, and it learns."""

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from vlmtune.tasks.clarify.data import COLOURS, TYPES, cell_labels, clarify_samples
from vlmtune.train.vision_warmup import warm_up_vision

pytestmark = pytest.mark.timeout(120)


def _load(path):
    return AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32), AutoProcessor.from_pretrained(path)


def test_warm_up_trains_only_the_vision_tower_and_learns_colours(tiny_model_dir):
    model, processor = _load(tiny_model_dir("qwen2_vl"))
    samples = list(clarify_samples(24, seed=0, image_size=84))  # 84 px: 3x3 merged tokens, one per cell
    images, scenes = [s.images[0] for s in samples], [s.meta["scene"] for s in samples]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(0)
    seen = []

    def labels(i, rows, cols):
        seen.append((rows, cols))
        return cell_labels(scenes[i], rows, cols)

    result = warm_up_vision(model, processor, images, labels, (len(TYPES) + 1, len(COLOURS) + 1),
                            steps=60, batch_size=8, lr=3e-3, show_progress=False)
    assert set(seen) == {(3, 3)}
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith("model.visual.") for k in changed), sorted(changed)[:5]
    # colour is a linear function of the pixels: 8 classes, chance 1/8; the empty cell alone is 1/9
    assert result["accuracy"][1] > 0.6, result
    assert result["steps"] == 60 and result["loss"] == result["loss"]


def test_warm_up_rejects_a_family_without_a_qwen_vision_tower(tiny_model_dir):
    model, processor = _load(tiny_model_dir("llava"))
    with pytest.raises(ValueError, match="Qwen-VL"):
        warm_up_vision(model, processor, [object()], lambda i, r, c: ([0],), (2,), steps=1)


def test_warm_up_needs_steps_and_images(tiny_model_dir):
    model, processor = _load(tiny_model_dir("qwen2_vl"))
    with pytest.raises(ValueError, match="steps"):
        warm_up_vision(model, processor, [], lambda i, r, c: ([0],), (2,), steps=5)
