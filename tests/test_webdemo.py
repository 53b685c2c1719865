"""The web demo in a real headless Chromium (Debian's chromium + chromium-driver, driven by selenium):
load the page, type, submit, and check what is rendered for each task the model serves."""

import shutil
import tempfile
from pathlib import Path

import pytest

from bertforge.inference.server import ServerThread, ServeSettings, create_app, create_app_from_dir
from test_server_real import dirs  # noqa: F401  (the tiny model directories fixture)

CHROMIUM, DRIVER = Path("/usr/bin/chromium"), shutil.which("chromedriver") or "/usr/bin/chromedriver"
HOW = "install it with: apt-get install -y chromium chromium-driver && .venv/bin/pip install selenium"
try:
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:
    webdriver = None

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(webdriver is None, reason=f"selenium is not installed; {HOW}"),
    pytest.mark.skipif(not CHROMIUM.exists() or not Path(DRIVER).exists(), reason=f"Chromium is not installed; {HOW}"),
]


@pytest.fixture(scope="module")
def browser():
    profile = tempfile.mkdtemp(prefix="bertforge-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                 f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=DRIVER))
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def wait(driver, condition, timeout=20):
    return WebDriverWait(driver, timeout).until(lambda d: condition(d))


def submit(driver, task, text, question=None):
    box = driver.find_element(By.ID, f"{task}-input")
    box.clear()
    box.send_keys(text)
    if question is not None:
        q = driver.find_element(By.ID, "qa-question")
        q.clear()
        q.send_keys(question)
    output = driver.find_element(By.ID, f"{task}-output")
    driver.execute_script("arguments[0].removeAttribute('data-done')", output)
    driver.find_element(By.ID, f"{task}-run").click()
    wait(driver, lambda d: output.get_attribute("data-done") == "1" or d.find_element(By.ID, "error").text)
    assert driver.find_element(By.ID, "error").text == ""
    return output


def test_every_panel_renders_its_result(browser):
    from test_server import classify, fakes, fill_mask

    app = create_app(fakes(), mask_token="[MASK]", model_name="fake-model", labels={"classify": ["neg", "pos"]})
    with ServerThread(app) as url:
        browser.get(url)
        wait(browser, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
        assert "fake-model" in browser.find_element(By.ID, "model").text
        assert browser.find_element(By.ID, "auth").is_displayed() is False

        text = "Ada met [MASK] in London."
        out = submit(browser, "fill-mask", text)
        names = [e.text for e in out.find_elements(By.CSS_SELECTOR, "li.candidate .name")]
        assert names == [c["token_str"] for c in fill_mask(text)]

        out = submit(browser, "classify", "a fine day")
        rows = out.find_elements(By.CSS_SELECTOR, ".row .name")
        assert [r.text for r in rows] == [r["label"] for r in classify("a fine day")]

        out = submit(browser, "ner", "Ada met Bob <b>here</b>")  # markup in the text stays text
        marks = out.find_elements(By.CSS_SELECTOR, "mark")
        assert [m.find_element(By.CLASS_NAME, "span-text").text for m in marks] == ["Ada", "Bob"]
        assert [m.find_element(By.CLASS_NAME, "tag").text for m in marks] == ["PER", "PER"]
        assert "<b>here</b>" in out.text

        out = submit(browser, "qa", "Ada lives in London", question="Where does Ada live?")
        assert out.find_element(By.CSS_SELECTOR, "mark.answer").text == "London"
        assert "London" in out.find_element(By.CLASS_NAME, "answer-text").text

        out = submit(browser, "embed", "a sentence")
        assert "4 dimensions" in out.find_element(By.CLASS_NAME, "embedding").text


def test_errors_and_api_key_in_the_page(browser):
    from test_server import Fake, fill_mask

    app = create_app({"fill-mask": Fake(fill_mask)}, mask_token="[MASK]", settings=ServeSettings(api_key="k3y"))
    with ServerThread(app) as url:
        browser.get(url)
        wait(browser, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
        assert not browser.find_element(By.ID, "ner").is_displayed()  # the model has no NER head
        box = browser.find_element(By.ID, "fill-mask-input")
        assert "[MASK]" in box.get_attribute("value")  # the example uses the model's own mask token
        browser.find_element(By.ID, "fill-mask-run").click()
        wait(browser, lambda d: "401" in d.find_element(By.ID, "error").text)
        browser.find_element(By.ID, "api-key").send_keys("k3y")
        box.clear()
        box.send_keys("no mask at all")
        browser.find_element(By.ID, "fill-mask-run").click()
        wait(browser, lambda d: "no mask token" in d.find_element(By.ID, "error").text)
        out = submit(browser, "fill-mask", "one [MASK] two")
        assert len(out.find_elements(By.CSS_SELECTOR, "li.candidate")) == 5


def test_real_models_in_the_page(browser, dirs):
    """Real pipelines behind the page: what is drawn is what the pipeline returns."""
    from bertforge.inference.pipelines import pipeline

    text = "Ada Lovelace lived in London ."
    with ServerThread(create_app_from_dir(dirs["ner"])) as url:
        browser.get(url)
        wait(browser, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
        assert browser.find_element(By.ID, "ner").is_displayed() and not browser.find_element(By.ID, "qa").is_displayed()
        out = submit(browser, "ner", text)
        drawn = [(m.find_element(By.CLASS_NAME, "span-text").text, m.find_element(By.CLASS_NAME, "tag").text)
                 for m in out.find_elements(By.CSS_SELECTOR, "mark")]
        expected = [(e["word"], e["entity_group"]) for e in pipeline(None, dirs["ner"])(text)]
        assert drawn == expected
        if not expected:
            assert "no entities found" in out.text
        assert out.text.replace("\n", " ").count("London") == 1  # the whole text is shown once
    with ServerThread(create_app_from_dir(dirs["pair"])) as url:
        browser.get(url)
        wait(browser, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
        assert browser.find_element(By.ID, "classify-pair").is_displayed()
        out = submit(browser, "classify", "A man sleeps.")
        drawn = [r.text for r in out.find_elements(By.CSS_SELECTOR, ".row .name")]
        pair = {"text": "A man sleeps.", "text_pair": browser.find_element(By.ID, "classify-pair").get_attribute("value")}
        assert drawn == [r["label"] for r in pipeline(None, dirs["pair"])(pair)]
