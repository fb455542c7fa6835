"""The official `openai` Python SDK against this server's /v1 images API, unchanged.

Run by scripts/test-openai-sdks with API_URL, USER_KEY (a user's key) and ADMIN_KEY set, against
a server with USER_MAX_IN_FLIGHT=1 and a sandbox slow enough to hold one task in flight.
"""

import base64
import json
import os
import sys
import time
import unittest
import urllib.request

import openai
from openai import OpenAI

API_URL = os.environ["API_URL"]
USER_KEY = os.environ["USER_KEY"]
PNG_1PX = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC"
)


def client(key=USER_KEY, **kw):
    return OpenAI(base_url=f"{API_URL}/v1", api_key=key, **kw)


def is_image(data: bytes) -> bool:
    return data.startswith(b"\x89PNG") or data.startswith(b"\xff\xd8")


class OpenAiPython(unittest.TestCase):
    def test_models_list(self):
        ids = [m.id for m in client().models.list()]
        for want in ("doubao-seedream-3.0-t2i", "doubao-seededit-3.0-i2i", "doubao-seedream-4.0"):
            self.assertIn(want, ids)
        self.assertEqual(client().models.retrieve("doubao-seedream-4.0").id, "doubao-seedream-4.0")

    def test_url(self):
        resp = client().images.generate(
            model="doubao-seedream-3.0-t2i", prompt="a lighthouse at night", size="1024x1024"
        )
        self.assertGreater(resp.created, 1_600_000_000)
        self.assertEqual(len(resp.data), 1)
        url = resp.data[0].url
        self.assertTrue(url.startswith(f"{API_URL}/images/"), url)
        with urllib.request.urlopen(url) as r:
            self.assertTrue(is_image(r.read()))

    def test_b64_json_n_2(self):
        resp = client().images.generate(
            model="doubao-seedream-4.0", prompt="two foxes", n=2, response_format="b64_json"
        )
        self.assertEqual(len(resp.data), 2)
        for d in resp.data:
            self.assertIsNone(d.url)
            self.assertTrue(is_image(base64.b64decode(d.b64_json)))

    def test_ark_extras_through_extra_body(self):
        resp = client().images.generate(
            model="doubao-seedream-3.0-t2i",
            prompt="a red fox",
            extra_body={"seed": 42, "guidance_scale": 3.0, "watermark": False},
        )
        self.assertEqual(len(resp.data), 1)

    def test_edit_with_a_reference_image(self):
        resp = client().images.edit(
            model="doubao-seededit-3.0-i2i",
            image=("ref.png", PNG_1PX, "image/png"),
            prompt="make it blue",
            size="adaptive",
        )
        self.assertEqual(len(resp.data), 1)
        with urllib.request.urlopen(resp.data[0].url) as r:
            self.assertTrue(is_image(r.read()))

    def test_edit_with_several_references_on_seedream_4(self):
        resp = client().images.edit(
            model="doubao-seedream-4.0",
            image=[("a.png", PNG_1PX, "image/png"), ("b.png", PNG_1PX, "image/png")],
            prompt="put them side by side",
            response_format="b64_json",
        )
        self.assertEqual(len(resp.data), 1)
        self.assertTrue(is_image(base64.b64decode(resp.data[0].b64_json)))

    def test_keep_alive_before_the_read_timeout(self):
        # The sandbox takes 1 s; the SDK gives up after 0.8 s without a byte. The server commits
        # the 200 before that and sends spaces, which the SDK's JSON parsing skips.
        resp = client(timeout=0.8, max_retries=0).images.generate(prompt="a slow heron")
        self.assertEqual(len(resp.data), 1)

    def test_bad_size_is_bad_request_with_param(self):
        with self.assertRaises(openai.BadRequestError) as cm:
            client().images.generate(model="doubao-seedream-3.0-t2i", prompt="x", size="12x12")
        self.assertEqual(cm.exception.status_code, 400)
        self.assertEqual(cm.exception.param, "size")
        self.assertEqual(cm.exception.type, "invalid_request_error")

    def test_content_filter_is_bad_request_with_the_providers_code(self):
        with self.assertRaises(openai.BadRequestError) as cm:
            client().images.generate(prompt="a sensitive-content scene")
        self.assertEqual(cm.exception.code, "InputTextSensitiveContentDetected")

    def test_wrong_key(self):
        with self.assertRaises(openai.AuthenticationError) as cm:
            client("sk-not-a-key", max_retries=0).images.generate(prompt="x")
        self.assertEqual(cm.exception.status_code, 401)
        self.assertEqual(cm.exception.code, "invalid_api_key")

    def test_user_quota_is_a_rate_limit_error(self):
        c = client(max_retries=0)
        # The first task stays in flight (slow sandbox) while the second is refused.
        first = c.images.with_raw_response.generate(
            prompt="slow one", extra_headers={"Prefer": "respond-async"}
        )
        self.assertEqual(first.status_code, 202)
        location = first.headers["location"]
        with self.assertRaises(openai.RateLimitError) as cm:
            c.images.generate(prompt="one too many")
        self.assertEqual(cm.exception.status_code, 429)
        self.assertGreaterEqual(int(cm.exception.response.headers["retry-after"]), 1)
        # The accepted task finishes; its Location then answers as the POST would have (and the
        # quota has room again for the other tests).
        deadline = time.monotonic() + 60
        while True:
            req = urllib.request.Request(
                f"{API_URL}{location}", headers={"Authorization": f"Bearer {USER_KEY}"}
            )
            with urllib.request.urlopen(req) as r:
                body = json.loads(r.read())
                if r.status == 200:
                    self.assertEqual(len(body["data"]), 1, body)
                    break
            self.assertLess(time.monotonic(), deadline, body)
            time.sleep(0.2)

if __name__ == "__main__":
    result = unittest.main(exit=False, verbosity=2).result
    sys.exit(0 if result.wasSuccessful() else 1)
