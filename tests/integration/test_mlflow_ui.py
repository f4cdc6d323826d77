"""The MLflow UI, opened in headless Chromium, lists the pipeline's stage runs and their lineage.

The pipeline is the tiny `bevt pipeline run-local` run tracked on the real MLflow server
(``tracked_pipeline``): a user opens its experiment, expands the pipeline's parent run and sees
every step's run nested under it, the finetune row naming its registered model, its train and val
datasets, every row its source; the Datasets filter finds the runs that used a dataset. The
screenshots are kept as test artifacts: in pytest's tmp dir (paths printed) and at
tests/artifacts/mlflow-ui.png and mlflow-ui-datasets.png (git-ignored).
"""

from __future__ import annotations

import shutil

import pytest

from tests.conftest import REPO
from tests.integration.conftest import PIPELINE_EXPERIMENT, PIPELINE_MODEL, PIPELINE_RUN, PIPELINE_STEPS
from tests.services import apt_install

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def chromium() -> tuple[str, str]:
    """Debian's chromium and chromedriver, installed when missing (as root). A failed install fails
    the test: the UI check is part of the suite, not optional."""
    packages = ["chromium", "chromium-driver"]
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        apt_install(packages)
    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert binary and driver, f"{packages} installed but chromium / chromedriver not on PATH"
    return binary, driver


@pytest.fixture
def browser(chromium):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium[0]
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1920,1080",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(chromium[1]), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def test_mlflow_ui_lists_the_pipelines_stage_runs(tracked_pipeline, mlflow_server, browser, tmp_path):
    import mlflow
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    def page() -> str:
        return browser.find_element(By.TAG_NAME, "body").text

    # As a user would: the experiment list, the pipeline's experiment, its training runs.
    wait = WebDriverWait(browser, 60)
    browser.get(f"{mlflow_server.uri}/#/experiments")
    wait.until(lambda d: d.find_element(By.LINK_TEXT, PIPELINE_EXPERIMENT)).click()
    tab = wait.until(lambda d: d.find_element(By.XPATH, "//a[normalize-space()='Training runs']"))
    browser.execute_script("arguments[0].click()", tab)  # a first-visit tip may cover the sidebar
    # The run table is rendered by React after the page loads. Collapsed, it shows only the parent run.
    wait.until(lambda d: PIPELINE_RUN in page())
    assert f"/experiments/{tracked_pipeline.experiment_id}/runs" in browser.current_url
    runs = 1 + sum(PIPELINE_STEPS.values())
    assert f"{runs} matching runs" in page() and "pretrain-joint" not in page()

    # The parent row's expander (the +/- button in its name cell) shows the step runs nested under it.
    (expander,) = browser.find_elements(By.CSS_SELECTOR, "button[data-component-id$='runnamecellrenderer.tsx_46']")
    browser.execute_script("arguments[0].click()", expander)
    wait.until(lambda d: all(name in page() for name in PIPELINE_STEPS))
    table = page()
    for name, count in PIPELINE_STEPS.items():
        assert table.split("\n").count(name) == count, (name, table)
    assert PIPELINE_MODEL in table  # the finetune run's registered model, in the Models column

    # Lineage in MLflow's own columns: the finetune row's Dataset cell names its train and val shards (name and
    # digest), and every step's Source cell says what started it.
    client = mlflow.MlflowClient(tracking_uri=mlflow_server.uri)
    steps = client.search_runs(
        [tracked_pipeline.experiment_id], f"tags.`mlflow.parentRunId` = '{tracked_pipeline.parent_run_id}'"
    )
    finetune = next(r for r in steps if r.info.run_name == "finetune scene")
    used = {
        {t.key: t.value for t in i.tags}["mlflow.data.context"]: f"{i.dataset.name} ({i.dataset.digest})"
        for i in finetune.inputs.dataset_inputs
    }
    assert set(used) == {"training", "validation"}, used

    def cell(run_id: str, column: str) -> str:
        return browser.find_element(
            By.XPATH, f"//div[@role='row'][@row-id='{run_id}']//div[@col-id='attributes.`{column}`']"
        ).text

    # One dataset per cell and "+1" until the rows are expanded to show them all.
    toggle = browser.find_element(By.XPATH, "//button[normalize-space()='Expand rows']")
    browser.execute_script("arguments[0].click()", toggle)
    wait.until(lambda d: used["validation"] in cell(finetune.info.run_id, "Dataset"))
    datasets = cell(finetune.info.run_id, "Dataset")
    assert used["training"] in datasets and used["validation"] in datasets, datasets
    for r in steps:
        assert cell(r.info.run_id, "Source") == f"pipeline step {r.data.tags['bevt.stage']}", r.info.run_name
    keep_screenshot(browser, tmp_path, "mlflow-ui.png")

    # The Datasets filter, set to the finetune's training shards in both contexts it has: written (the shard run)
    # and trained on (the finetune run). Exactly those two runs remain.
    browser.execute_script("arguments[0].click()", browser.find_element(By.CSS_SELECTOR, FILTER))
    name = used["training"].rsplit(" (", 1)[0]
    options = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, f"[data-testid='dataset-dropdown-{name}']"))
    for option in options:
        option.click()
    browser.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)
    wait.until(lambda d: "2 matching runs" in page())
    shown = {e.get_attribute("row-id") for e in browser.find_elements(By.CSS_SELECTOR, "div[role='row'][row-id]")}
    producer = finetune.data.tags["bevt.upstream.train"]
    assert shown == {finetune.info.run_id, producer}, (shown, page())
    keep_screenshot(browser, tmp_path, "mlflow-ui-datasets.png")


FILTER = "[data-testid='datasets-select-dropdown']"


def keep_screenshot(browser, tmp_path, name: str) -> None:
    shot = tmp_path / name
    assert browser.save_screenshot(str(shot)) and shot.read_bytes()[:4] == b"\x89PNG"
    kept = REPO / "tests" / "artifacts" / name
    kept.parent.mkdir(exist_ok=True)
    shutil.copyfile(shot, kept)
    print(f"screenshot of the MLflow UI: {shot} (copy: {kept})")
