"""`engine rules import-wandb` in a subprocess, then `engine rules validate` on what it wrote."""

from __future__ import annotations

from pathlib import Path

from tests.acceptance.test_rules_cli import engine

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "wandb"


def test_import_writes_rule_files_that_validate_and_lists_the_secrets(tmp_path, database_url):
    out = tmp_path / "rules"
    result = engine(
        "import-wandb",
        str(FIXTURES / "sdk_automations.json"),
        str(FIXTURES / "graphql_triggers.json"),
        "--entity",
        "acme",
        "--registry",
        "model",
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    assert len(list(out.glob("*.yaml"))) == 43
    assert f"wrote {out / 'gql-threshold-above.yaml'}  (GQL threshold above)" in result.stdout
    tail = result.stdout.splitlines()[-7:]
    assert tail == [
        "converted 43, refused 0",
        "set these environment variables (the rules name them as {env: NAME}):",
        "  SLACK_TOKEN_ACME_ML: a Slack bot token of Slack workspace Acme ML (W&B integration SW50ZWdyYXRpb246MjE=)",
        "  SLACK_WEBHOOK_11: the Slack incoming-webhook URL for W&B Slack integration SW50ZWdyYXRpb246MTE=",
        "  WANDB_WEBHOOK_CI_TRIGGER_TOKEN: the access token of W&B webhook integration ci-trigger (${ACCESS_TOKEN})",
        "replace these placeholder URLs in the rules (W&B's JSON does not carry them):",
        "  https://wandb-webhook-12.invalid/: the URL of W&B webhook integration 12",
    ]
    assert "note: action.url: W&B's JSON does not carry the URL of webhook integration 12" in result.stderr

    # --check-db: PostgreSQL compiles every converted regex (escaped names, alternatives)
    validated = engine("validate", "--check-db", str(out))
    assert validated.returncode == 0, validated.stderr
    assert validated.stdout.strip() == "ok: 43 rules in 43 files"

    # a second import does not overwrite what the user may have edited since
    again = engine(
        "import-wandb", str(FIXTURES / "graphql_triggers.json"), "--entity", "acme", "--out", str(out)
    )
    assert again.returncode == 1
    assert f"{out / 'gql-change.yaml'} exists (--force overwrites it)" in again.stderr


def test_refusals_name_automation_and_field_exit_1_and_the_rest_is_printed(tmp_path):
    result = engine(
        "import-wandb",
        str(FIXTURES / "sdk_refused.json"),
        str(FIXTURES / "graphql_triggers.json"),
        "--entity",
        "acme",
    )
    assert result.returncode == 1
    refused = [line for line in result.stderr.splitlines() if line.startswith("refused: ")]
    assert len(refused) == 5
    assert (
        f"refused: {FIXTURES / 'sdk_refused.json'}: automation 'ask-aria': action.prompt: an ARIA prompt"
        in result.stderr
    )
    assert "converted 10, refused 5" in result.stderr
    # without --out the converted rules are one YAML stream on stdout, which validates
    (tmp_path / "all.yaml").write_text(result.stdout)
    validated = engine("validate", "all.yaml", cwd=tmp_path)
    assert validated.returncode == 0, validated.stderr
    assert validated.stdout.strip() == "ok: 10 rules in 1 file"
