"""Screenshot a dashboard page in headless Chromium (how docs/img/dashboard-*.png are made).

    .venv/bin/python scripts/screenshot_ui.py http://127.0.0.1:8000/ui/sweeps/ID out.png \
        [--wait '#summary-table'] [--key mxl_…]
"""

import argparse
import os

from playwright.sync_api import sync_playwright

CHROMIUM = os.environ.get("MIXLAB_CHROMIUM", "/usr/bin/chromium")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("out")
    parser.add_argument("--wait", default="main h1", help="CSS selector to wait for")
    parser.add_argument("--key", default=os.environ.get("MIXLAB_API_KEY"),
                        help="API key, when the server asks for one")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=900)
    args = parser.parse_args()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM,
                                    args=["--no-sandbox", "--headless=new", "--disable-gpu"])
        page = browser.new_page(viewport={"width": args.width, "height": args.height})
        if args.key:  # the dashboard reads it from the tab's session storage
            page.add_init_script(f"sessionStorage.setItem('mixlab.key', {args.key!r})")
        page.goto(args.url)
        page.locator(args.wait).first.wait_for()
        page.wait_for_timeout(500)  # let Plotly finish its transition before the picture
        page.screenshot(path=args.out, full_page=False)
        browser.close()


if __name__ == "__main__":
    main()
