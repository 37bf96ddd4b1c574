"""How repeatable is a side-by-side latency reading? ResNet-50 (random init) pruned to about half
its MACs, timed beside the baseline (CPU, batch 16, 2 threads) several times in one process.

``copies``: K readings on fresh copies of both models, then K on the same copies (is the spread a
property of the copies?). ``sequence``: readings before and after four more prunings of the model
(does allocation churn between readings move them?). Results quoted in docs/latency.md are in
``tools/results/latency_target/repeatability/``. Run on a quiet machine:

    .venv/bin/python tools/latency_repeatability.py copies torchvision:resnet50 3 10
    .venv/bin/python tools/latency_repeatability.py sequence
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODE = sys.argv.pop(1) if len(sys.argv) > 1 else "copies"
if MODE == "copies":
    import copy
    import statistics
    import sys

    import torch

    from taylorprune.latency import TimingSettings
    from taylorprune.latency.timing import (
        interleaved_times,
        module_to_settings,
        ratio_summary,
        time_once,
        to_settings,
    )
    from taylorprune.models import build_model, parse_model_string
    from taylorprune.pruning import StructuredPruner, Target

    name = sys.argv[1] if len(sys.argv) > 1 else "torchvision:resnet18"
    K = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    runs = int(sys.argv[3]) if len(sys.argv) > 3 else 15
    torch.manual_seed(0)
    m = build_model(parse_model_string(name)).eval()
    p = StructuredPruner(copy.deepcopy(m), torch.zeros(1, 3, 224, 224), round_to=8)
    scores = {g.root: torch.rand(g.size) for g in p.groups()}
    p.remove_to_target(scores, Target("macs", 0.5))
    pruned = p.model.eval()
    s = TimingSettings(batch_size=16, threads=2)
    print("fresh copies each time:")
    for _ in range(K):
        t = interleaved_times([m, pruned], (3, 224, 224), s, runs=runs)
        r = ratio_summary(t[1], t[0])
        print(
            f"  {r['median']:.3f} ({r['p10']:.3f}-{r['p90']:.3f}) "
            f"base {statistics.median(t[0]):.0f} ms",
            flush=True,
        )
    print("same copies:")
    dev = torch.device("cpu")
    nets = [module_to_settings(copy.deepcopy(x), s, dev) for x in (m, pruned)]
    x = to_settings(
        torch.randn(16, 3, 224, 224, generator=torch.Generator().manual_seed(0)), s, dev
    )
    torch.set_num_threads(2)
    with torch.inference_mode():
        for n in nets:
            n(x)
            n(x)
        for _ in range(K):
            tb, tm = [], []
            for r in range(runs):
                order = (0, 1) if r % 2 == 0 else (1, 0)
                for i in order:
                    (tb if i == 0 else tm).append(time_once(lambda i=i: nets[i](x), dev))
            rr = [a / b for a, b in zip(tm, tb, strict=False)]
            print(f"  {statistics.median(rr):.3f} base {statistics.median(tb):.0f} ms", flush=True)
else:
    import copy
    import sys

    import torch

    from taylorprune.latency import TimingSettings
    from taylorprune.latency.timing import interleaved_times, ratio_summary
    from taylorprune.models import build_model, parse_model_string
    from taylorprune.pruning import StructuredPruner, Target

    torch.manual_seed(0)
    m = build_model(parse_model_string("torchvision:resnet50")).eval()
    ex = torch.zeros(1, 3, 224, 224)
    p = StructuredPruner(copy.deepcopy(m), ex, round_to=8)
    scores = {g.root: torch.rand(g.size) for g in p.groups()}
    p.remove_to_target(scores, Target("macs", 0.45))
    s = TimingSettings(batch_size=16, threads=2)

    def meas(tag):
        t = interleaved_times([m, p.model], (3, 224, 224), s, runs=12)
        r = ratio_summary(t[1], t[0])
        print(f"{tag}: {r['median']:.3f} ({r['p10']:.3f}-{r['p90']:.3f})", flush=True)

    meas("before churn")
    meas("before churn, again")
    for k in (0.4, 0.5, 0.6, 0.7):
        q = StructuredPruner(copy.deepcopy(m), ex, round_to=8)
        q.remove_to_target({g.root: torch.rand(g.size) for g in q.groups()}, Target("macs", k))
    meas("after 4 MACs prunes")
    meas("after, again")
