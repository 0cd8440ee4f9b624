"""The example rules of `rules/`, rewritten in memory for one demo (the files are not changed):

* names get the prefix `demo.`, so the demo never updates the automations you applied yourself
  from the same files (and you can tell its history apart);
* `scope.project` becomes the demo's own project (a new one per demo), so its runs never mix
  with yours and running the demo again tells the same story;
* every webhook goes to the demo's local receiver (same path), and every Slack action to the
  receiver's /slack through the incoming-webhook variable ENGINE_DEMO_SLACK_URL.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from engine.rules import Automation, load_rules

PREFIX = "demo."
SLACK_ENV = "ENGINE_DEMO_SLACK_URL"
HMAC_ENV = "ENGINE_DEMO_HMAC"
# The example rules live beside the package in a checkout; ENGINE_RULES_PATH is the fallback.
EXAMPLES = Path(__file__).resolve().parents[2] / "rules"


@dataclass(frozen=True)
class Expectation:
    """How often an example rule fires in one demo, and what makes it fire."""

    at_least: int
    because: str


# Keep in sync with scenario.py: the demo waits until each of these has fired.
EXPECTED: dict[str, Expectation] = {
    "accuracy-above-0.6": Expectation(3, "each sweep run: avg accuracy of 5 passes 0.6"),
    "loss-down-25pct": Expectation(1, "finetune-plateau: the LR drop cuts the loss"),
    "cpu-above-90": Expectation(1, "4 system/cpu samples above 90 % (CPU burst)"),
    "run-failed": Expectation(1, "resnet-bad-aug raises an exception"),
    "dataset-latest": Expectation(2, "mnist v0, then v1, become latest"),
    "production-alias": Expectation(1, "the best sweep model goes to production"),
    "model-registry-link": Expectation(1, "it is linked into the model registry"),
    "europe-tag": Expectation(1, "it is tagged europe-west (no_op: not sent)"),
    "training-alert": Expectation(1, "resnet-bad-aug alerts once its loss is NaN (repeats dropped)"),
    "europe-tag-removed": Expectation(1, "its europe-north tag is taken off again"),
    "registry-unlinked": Expectation(1, "it leaves the registry's staging collection"),
    "dataset-golden": Expectation(1, "the mnist collection is tagged golden"),
    "dataset-reviewed": Expectation(1, "its needs-review tag is taken off first"),
    "loss-nan": Expectation(1, "resnet-bad-aug's loss goes NaN at step 14"),
    "loss-spike-zscore": Expectation(1, "resnet-spike: a corrupt batch at step 36 spikes the loss"),
    "run-stalled": Expectation(1, "resnet-hang stops logging (its 30m pass in 3 s of demo time)"),
}


def example_name(demo_name: str) -> str:
    return demo_name.removeprefix(PREFIX)


def demo_rules(folder: Path, project: str, receiver_url: str) -> list[tuple[Automation, str]]:
    """The rules of `folder`, rewritten for a demo in `project` sending to `receiver_url`,
    each with the file it came from."""
    return [
        (rewrite(loaded.automation, project, receiver_url), loaded.file) for loaded in load_rules([folder])
    ]


def rewrite(rule: Automation, project: str, receiver_url: str) -> Automation:
    data = rule.to_json()
    data["name"] = PREFIX + rule.name
    if data["scope"].get("project"):
        data["scope"]["project"] = project
    action = data["action"]
    if action["type"] == "webhook":
        parts = urlsplit(action["url"])
        action["url"] = receiver_url + (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    elif action["type"] == "slack":
        action.update(webhook_url={"env": SLACK_ENV}, token=None, channel=None)
    return Automation.model_validate(data)
