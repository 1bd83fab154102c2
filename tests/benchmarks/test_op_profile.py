"""benchmarks/op_profile.py: a peer's step under torch.profiler, grouped like XLA's ops, and the report."""

import pytest

from benchmarks import op_profile
from cxr_jax import profiling

torch = pytest.importorskip("torch")

# A stand-in for ../shared/bench/torch_peers.py with its interface: argparse in main(), BUILDERS, DEFAULTS.
PEERS = '''
import argparse
import torch

def build(args):
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(4 * args.size ** 2, 2))
    opt = torch.optim.Adam(net.parameters())
    def step(x):
        loss = net(x).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()
    return net, lambda: torch.rand(args.batch, 1, args.size, args.size), step, {}

BUILDERS, DEFAULTS = {"tiny": build}, {"tiny": (2, 8)}

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--batch", type=int)
    ap.add_argument("--size", type=int)
    ap.parse_args()
    raise SystemExit("main() must not run its own steps")
'''


def test_torch_ops_fall_into_xlas_categories():
    assert op_profile.torch_category("aten::convolution_backward") == profiling.BACKWARD
    assert op_profile.torch_category("aten::mkldnn_convolution") == "conv forward"
    assert op_profile.torch_category("aten::addmm") == "matmul"
    assert op_profile.torch_category("aten::native_batch_norm") == "reduce / pool"
    assert op_profile.torch_category("aten::_foreach_mul_") == "optimizer"
    assert op_profile.torch_category("aten::relu") == "elementwise"


def test_a_peers_step_is_profiled_with_its_own_arguments(tmp_path):
    peers = tmp_path / "peers.py"
    peers.write_text(PEERS)
    result = op_profile.profile_torch(str(peers), ["tiny", "--size", "16"], steps=2, warmup=1, threads=1)
    assert result["ops"]["conv forward"] > 0 and result["ops"][profiling.BACKWARD] > 0
    assert result["ops"]["matmul"] > 0
    assert any(op == "aten::convolution_backward" and calls == 1.0 for op, _, _, calls in result["top_ops"])
    jax_result = {"step_time_median_s": 0.5, "profiled_step_s": 0.5,
                  "ops": dict.fromkeys(profiling.CATEGORIES, 0.1),
                  "top_ops": [("fusion.1", "conv forward", 0.1, 1.0)]}
    text = op_profile.report("tiny", jax_result, result)
    assert text.startswith("## tiny") and "| conv forward | 0.100 |" in text and "`aten::" in text
