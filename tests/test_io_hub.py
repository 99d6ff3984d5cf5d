"""push_to_hub down to the HTTP layer: a local fake of the three hub endpoints an upload uses
(repo create, preupload, commit). The real hub is unreachable here, so this is as far as we can test."""
import base64, json, os, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
import pytest, torch
import huggingface_hub.constants as hf_constants
from transformers import LlamaConfig, LlamaForCausalLM
from gptq_nb.quant import QuantizeConfig
from gptq_nb.quantize import rtn_quantize_model
from gptq_nb.io import save_quantized, push_to_hub, CheckpointError


class FakeHub(BaseHTTPRequestHandler):
    requests = []

    def _body(self):
        n = int(self.headers.get("Content-Length") or 0)
        if n: return self.rfile.read(n)
        out = b""
        if self.headers.get("Transfer-Encoding") == "chunked":
            while (size := int(self.rfile.readline().strip(), 16)):
                out += self.rfile.read(size); self.rfile.readline()
            self.rfile.readline()
        return out

    def _send(self, obj, code=200):
        b = json.dumps(obj).encode()
        self.send_response(code); self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(b))); self.end_headers(); self.wfile.write(b)

    def do_POST(self):
        body = self._body(); self.requests.append((self.path, self.headers.get("Authorization"), body))
        base = hf_constants.ENDPOINT
        if self.path == "/api/repos/create": return self._send({"url": f"{base}/me/tiny-gptq", "name": "tiny-gptq"})
        if "/preupload/" in self.path:
            files = json.loads(body)["files"]
            return self._send({"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]})
        if "/commit/" in self.path:
            return self._send({"commitUrl": f"{base}/me/tiny-gptq/commit/{'a' * 40}", "commitOid": "a" * 40, "success": True})
        self._send({"error": "not faked"}, 404)

    def do_GET(self): self._send({"error": "not faked"}, 404)
    def log_message(self, *a): pass


@pytest.fixture
def fake_hub(monkeypatch):
    FakeHub.requests = []
    srv = ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    monkeypatch.setattr(hf_constants, "ENDPOINT", f"http://127.0.0.1:{srv.server_port}")
    yield FakeHub.requests
    srv.shutdown()


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(0)
    m = LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
                                     num_key_value_heads=2, vocab_size=128)).eval()
    rtn_quantize_model(m, QuantizeConfig(bits=4, group_size=32))
    return save_quantized(m, tmp_path / "ck")


def test_push_sends_every_file(fake_hub, checkpoint):
    (checkpoint / ".hidden").write_text("not for upload")
    push_to_hub(checkpoint, "me/tiny-gptq", token="hf_fake", private=True)
    paths = [p for p, _, _ in fake_hub]
    create = json.loads(fake_hub[0][2])
    assert paths[0] == "/api/repos/create" and create["name"] == "tiny-gptq" and create["organization"] == "me"
    assert create.get("private") is True or create.get("visibility") == "private"   # hub client 0.x/1.x vs 2.x
    assert any("/preupload/main" in p for p in paths)
    commit = [b for p, _, b in fake_hub if "/commit/main" in p][0]
    sent = {}
    for line in commit.decode().splitlines():
        rec = json.loads(line)
        if rec["key"] == "file": sent[rec["value"]["path"]] = base64.b64decode(rec["value"]["content"])
    on_disk = {p.name: p.read_bytes() for p in checkpoint.iterdir() if not p.name.startswith(".")}
    assert sent == on_disk                       # every file, byte for byte, and no hidden file
    assert all(auth == "Bearer hf_fake" for _, auth, _ in fake_hub)


def test_push_refuses_broken_checkpoint(fake_hub, checkpoint):
    p = checkpoint / "model.safetensors"; p.write_bytes(p.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="truncated"): push_to_hub(checkpoint, "me/tiny-gptq", token="hf_fake")
    assert fake_hub == []                        # nothing reached the network
