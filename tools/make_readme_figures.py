"""Draw the README's two pictures into docs/: the shipped model on val images it never saw, and the roadmap.

    python tools/make_readme_figures.py
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from rtmdet_lesson.checkpoint import load_checkpoint_model  # noqa: E402
from rtmdet_lesson.data.sprites import render_sample  # noqa: E402
from rtmdet_lesson.figures.instances import draw_instances  # noqa: E402
from rtmdet_lesson.figures.roadmap import roadmap_figure  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
VAL_INDICES = (0, 3, 7)  # images of the val split of seed 0, which training never sees


def main() -> None:
    docs = REPO_ROOT / "docs"
    docs.mkdir(exist_ok=True)
    model = load_checkpoint_model(REPO_ROOT / "data" / "course-sprites.pth").eval()
    images = [render_sample(seed=0, split="val", index=i).image for i in VAL_INDICES]
    fig, axes = plt.subplots(1, len(images), figsize=(4.2 * len(images), 4.4))
    for ax, image, instances in zip(axes, images, model.predict(images), strict=True):
        draw_instances(image, instances, model.class_names, score_thr=0.3, ax=ax)
        ax.axis("off")
    fig.suptitle("data/course-sprites.pth on val images (score > 0.3): masks, boxes, class and score")
    fig.tight_layout()
    fig.savefig(docs / "predictions.png", dpi=80)
    roadmap_figure(None).savefig(docs / "roadmap.png", dpi=80)
    print("wrote docs/predictions.png and docs/roadmap.png")


if __name__ == "__main__":
    main()
