"""GPU checks of the packed layer and the loaders (skipped without CUDA): QuantLinear in fp16/bf16/fp32 on the device,
gradients to the input, `from_quantized(device="cuda")`, `from_pretrained(device_map="cuda")`, and the Triton backend
plugged into QuantLinear's registry (when gptq_nb.kernels can run)."""
import pytest, torch
from transformers import LlamaConfig, LlamaForCausalLM, AutoModelForCausalLM
from gptq_nb.quant import QuantizeConfig, rtn_quantize
from gptq_nb.pack import fp16_scales, make_g_idx
from gptq_nb.qlinear import QuantLinear, register_backend, unregister_backend, resolve_backend
from gptq_nb.quantize import rtn_quantize_model
from gptq_nb.io import save_quantized, from_quantized
import gptq_nb.hf  # noqa: F401  (registers the transformers integration)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_qlinear_cuda_dtypes(bits):
    torch.manual_seed(0)
    W, b, x = torch.randn(256, 320), torch.randn(256), torch.randn(7, 320)
    qw = rtn_quantize(W, bits, 64, sym=False)
    ref = x.double() @ fp16_scales(qw).dequantize().double().T + b.double()
    m = QuantLinear.from_quantized_weight(qw, b).cuda()
    for dt, tol in ((torch.float32, 1e-4), (torch.float16, 2e-2), (torch.bfloat16, 1e-1)):
        y = m(x.cuda().to(dt))
        assert y.dtype == dt and y.is_cuda
        assert (y.double().cpu() - ref).abs().max() <= tol * ref.abs().max()
    xg = x.cuda().requires_grad_(); m(xg).sum().backward()
    assert torch.allclose(xg.grad.cpu(), fp16_scales(qw).dequantize().sum(0).expand(7, -1), atol=1e-3)


def test_loaders_on_cuda(tmp_path):
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                                         num_key_value_heads=2, vocab_size=512, tie_word_embeddings=True)).eval()
    rtn_quantize_model(model, QuantizeConfig(bits=4, group_size=128, sym=False))
    ids = torch.randint(0, 512, (2, 16))
    with torch.no_grad(): ref = model(ids).logits
    ck = save_quantized(model, tmp_path / "ck")
    ours = from_quantized(ck, device="cuda", dtype=torch.float16)
    hf = AutoModelForCausalLM.from_pretrained(ck, dtype=torch.float16, device_map="cuda")
    assert isinstance(hf.model.layers[0].mlp.down_proj, QuantLinear) and hf.model.layers[0].mlp.down_proj.qweight.is_cuda
    with torch.no_grad():
        a = ours(ids.cuda()).logits.float().cpu(); h = hf(ids.cuda()).logits.float().cpu()
    tol = 2e-2 * ref.abs().max()
    assert (a - ref).abs().max() <= tol and (h - ref).abs().max() <= tol, ((a - ref).abs().max(), (h - ref).abs().max())
    print(f"fp16 cuda vs fp32 cpu: from_quantized {(a - ref).abs().max():.2e}, from_pretrained {(h - ref).abs().max():.2e}")


def test_triton_backend_plugs_in():
    gemm = pytest.importorskip("gptq_nb.kernels.gemm")
    if not gemm.kernels_available(torch.device("cuda")): pytest.skip("Triton kernels not available")
    fwd = lambda m, x: gemm.gptq_gemm(x, m.qweight, m.qzeros, m.scales, m.g_idx, m.bits, m.group_size,
                                      m.checkpoint_format, m.bias)
    register_backend("triton", fwd, lambda m, x: x.is_cuda)
    try:
        torch.manual_seed(0)
        W, x = torch.randn(512, 384), torch.randn(5, 384)
        for perm in (None, torch.randperm(384)):
            qw = rtn_quantize(W, 4, 128, sym=False)
            if perm is not None: qw.g_idx = make_g_idx(384, 128, perm)
            m = QuantLinear.from_quantized_weight(qw, torch.randn(512)).cuda()
            xc = x.cuda().half()
            assert resolve_backend(m, xc) == "triton"
            y_tri = m(xc); m.backend = "torch"; y_ref = m(xc); m.backend = "auto"
            assert (y_tri.float() - y_ref.float()).abs().max() <= 2e-2 * y_ref.float().abs().max()
    finally:
        unregister_backend("triton")
