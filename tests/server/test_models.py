"""The read-only models view over real HTTP, against the real MLflow registry whose backend store is
the module's PostgreSQL database: the empty registry, a registered version with its production
alias, alias history (promotions and a rollback), source run and metrics, and the problem responses."""

from __future__ import annotations

from typing import Any

import httpx
import pytest


def _problem(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = r.json()
    assert body["code"] == code and body["status"] == status and body["detail"]
    return body


def test_an_empty_registry_and_the_problems(live: Any) -> None:
    with live.client("a") as client:
        assert client.get("/models").json() == []
        assert "no model named 'nope'" in _problem(client.get("/models/nope"), 404, "not_found")["detail"]
        assert "invalid model name" in _problem(client.get("/models/-bad"), 400, "config_error")["detail"]
        assert client.post("/models", json={}).status_code == 405
    with live.client() as anonymous:
        _problem(anonymous.get("/models"), 401, "unauthenticated")
    with live.client() as client:
        assert {"/models", "/models/{name}"} <= set(client.get("/openapi.json").json()["paths"])


def test_a_registered_model_is_listed_with_its_alias_run_and_metrics(live: Any) -> None:
    from mlflow.entities import Metric

    from ragtune.finetune.lifecycle.registry import ModelRegistry

    registry = ModelRegistry(live.settings)
    client = registry.client
    adapter = live.settings.data_dir / "adapters" / "viewed"
    adapter.mkdir(parents=True)
    run = client.create_run(registry.experiment_id, tags={"ragtune.run_id": "viewed-1"}, run_name="viewed-1")
    metrics = {"eval.token_f1": 0.75, "eval.base.token_f1": 0.5, "train_loss": 1.5}
    client.log_batch(run.info.run_id, metrics=[Metric(k, v, 0, 0) for k, v in metrics.items()])
    client.set_terminated(run.info.run_id, status="FINISHED")
    client.create_registered_model("viewed")
    for _ in range(2):
        client.create_model_version("viewed", adapter.as_uri(), run_id=run.info.run_id, tags={
            "ragtune.run_id": "viewed-1", "ragtune.status": "completed", "ragtune.base": "smollm2",
            "ragtune.dataset": "sums@1", "ragtune.run_dir": str(live.settings.data_dir / "runs" / "viewed-1")})
    registry.promote("viewed", 1)  # then 2, rolled back: production is 1 again, with a history
    registry.promote("viewed", 2)
    registry.rollback("viewed")

    with live.client("b") as http:
        [model] = http.get("/models").json()
        assert (model["name"], model["production"], model["latest"]) == ("viewed", 1, 2)
        assert [(c["action"], c["from"], c["to"]) for c in model["history"]] == [
            ("promote", None, 1), ("promote", 1, 2), ("rollback", 2, 1)]
        first, second = model["versions"]
        assert first["aliases"] == ["production"] and second["aliases"] == []
        assert first["run_id"] == "viewed-1" and first["mlflow_run_id"] == run.info.run_id
        assert first["run_status"] == "FINISHED" and first["servable"] and first["base"] == "smollm2"
        assert first["metrics"] == {"eval.token_f1": 0.75}  # key metrics: the tuned model's evaluation
        assert "run_dir" not in first and "adapter" not in first  # no server paths
        shown = http.get("/models/viewed").json()
        assert shown["production"] == 1 and [v["version"] for v in shown["versions"]] == [1, 2]
        assert shown["history"] == model["history"]
        assert shown["versions"][0]["metrics"] == {"eval.base.token_f1": 0.5, "eval.token_f1": 0.75, "train_loss": 1.5}
        assert http.delete("/models/viewed").status_code == 405


@pytest.mark.browser
@pytest.mark.slow
def test_the_console_lists_the_models(live: Any) -> None:
    """The Models tab in headless Chromium (after the test above registered ``viewed``)."""
    from playwright.sync_api import expect, sync_playwright

    from tests.server.test_console import CHROMIUM, CHROMIUM_ARGS

    if not CHROMIUM.exists():
        pytest.fail("Debian's chromium is not installed: run `make chromium` (or deselect with -m 'not browser')")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"{live.url}/console/#models")
            page.fill("#key", live.keys["a"])
            page.click("#login-form button")
            expect(page.locator("#models")).to_be_visible(timeout=30_000)
            rows = page.locator("#model-list tbody tr")
            expect(rows).to_have_count(2, timeout=30_000)
            expect(page.locator("#model-list tbody tr.production")).to_contain_text("token_f1 0.750")
            expect(page.locator("#models-empty")).to_be_hidden()
            assert errors == []
        finally:
            browser.close()
