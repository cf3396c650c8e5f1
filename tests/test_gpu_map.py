"""Which GPUs a run measures: CUDA ordinals as the user's process sees them, bound to
NVML cards, against a fake NVML card list and a fake CUDA driver device list; the
errors for what cannot be measured; the config key and the flag; and a two-GPU
simulated run whose windows carry one energy part per GPU."""

from __future__ import annotations

import math
import sys
import types
from pathlib import Path

import pytest

import wattscope
from wattscope import cli, config, metrics
from wattscope.events import Window
from wattscope.telemetry import gpu_map
from wattscope.telemetry.gpu_map import CudaDevice, GpuMapError, PhysicalGpu, resolve, visible_devices

UUIDS = (
    "GPU-8932f937-d72c-4106-c12f-20bd9faed9f6",
    "GPU-1c7e0a12-5d3b-4e21-9a7c-0b8f2d6e4a10",
    "GPU-1c7e9b44-0e2f-4c6d-8b1a-7d3e5f9c2b88",
)
PCI = ("00000000:1B:00.0", "00000000:43:00.0", "00000000:52:00.0")
# A fake NVML: three cards in NVML (PCI) order.
MACHINE = [PhysicalGpu(i, UUIDS[i], PCI[i], "NVIDIA H100 80GB HBM3") for i in range(3)]


def _nvml_indices(ordinals, **kw) -> list[int]:
    return [b.nvml_index for b in resolve(ordinals, MACHINE, **kw)]


@pytest.mark.parametrize(
    "visible,ordinals,expected",
    [
        (None, [0, 1, 2], [0, 1, 2]),  # unset: every card, in NVML order
        ("2", [0], [2]),  # the second GPU is cuda:0 in the user's process
        ("2,0", [0, 1], [2, 0]),  # reordered
        ("1,2,0", [2, 0], [0, 1]),  # ordinals given out of order keep their cards
        (" 0 , 2 ", [1], [2]),  # blanks around entries, as CUDA allows
    ],
)
def test_visible_devices_permutations_map_ordinals_to_their_cards(visible, ordinals, expected) -> None:
    assert _nvml_indices(ordinals, visible=visible) == expected


def test_a_binding_carries_ordinal_uuid_pci_and_nvml_index() -> None:
    (b,) = resolve([1], MACHINE, visible="2,1")
    assert (b.ordinal, b.uuid, b.pci_bus_id, b.nvml_index, b.device) == (1, UUIDS[1], PCI[1], 1, "cuda:1")
    assert b.to_meta() == {"cuda_ordinal": 1, "uuid": UUIDS[1], "pci_bus_id": PCI[1], "nvml_index": 1,
                           "name": "NVIDIA H100 80GB HBM3"}


def test_uuid_and_uuid_prefix_forms() -> None:
    assert _nvml_indices([0, 1], visible=f"{UUIDS[2]},{UUIDS[0]}") == [2, 0]
    assert _nvml_indices([0], visible="GPU-8932") == [0]  # a unique prefix, as CUDA accepts
    assert _nvml_indices([0], visible="gpu-1C7E0A") == [1]  # case does not matter
    with pytest.raises(GpuMapError, match=r"entry 'GPU-1c7e' matches 2 GPUs' UUIDs"):
        visible_devices("GPU-1c7e", MACHINE)
    with pytest.raises(GpuMapError, match=r"entry 'GPU-ffff' matches no GPU's UUID"):
        visible_devices("0,GPU-ffff", MACHINE)


@pytest.mark.parametrize(
    "visible,message",
    [
        ("0,7", r"CUDA_VISIBLE_DEVICES='0,7': entry '7' names no GPU: this machine has 3 GPU\(s\), NVML indices 0..2"),
        ("0,,1", r"entry '' is neither a GPU index nor a GPU UUID"),
        ("-1", r"entry '-1' is neither a GPU index nor a GPU UUID"),
        ("1,1", r"entry '1' names GPU 1 \(GPU-1c7e0a12.*\) a second time"),
        ("MIG-5c3a9b1e-0d2f-5e6a-9b8c-1d2e3f4a5b6c", r"entry 'MIG-5c3a.*' is a MIG instance"),
    ],
)
def test_an_unmappable_visible_devices_list_names_its_entry(visible, message) -> None:
    with pytest.raises(GpuMapError, match=message):
        resolve([0], MACHINE, visible=visible)


def test_an_ordinal_the_process_does_not_see_is_refused() -> None:
    with pytest.raises(GpuMapError, match=r"--gpus: GPU 1 does not exist: this process sees 1 GPU\(s\) "
                                          r"\(CUDA_VISIBLE_DEVICES='2'\), CUDA ordinals 0..0"):
        resolve([0, 1], MACHINE, visible="2", where="--gpus")
    with pytest.raises(GpuMapError, match=r"GPU 3 does not exist: this process sees 3 GPU\(s\), CUDA ordinals 0..2"):
        resolve([3], MACHINE)
    with pytest.raises(GpuMapError, match=r"GPU 0 does not exist: this process sees 0 GPU\(s\)"):
        resolve([0], MACHINE, visible="")
    with pytest.raises(GpuMapError, match="GPU 1 is listed twice"):
        resolve([1, 1], MACHINE)
    with pytest.raises(GpuMapError, match="no GPU given"):
        resolve([], MACHINE)


def test_a_card_in_mig_mode_is_refused() -> None:
    machine = [MACHINE[0], PhysicalGpu(1, UUIDS[1], PCI[1], "NVIDIA H100", mig=True)]
    assert _nvml_indices([0], visible="0") == [0]
    with pytest.raises(GpuMapError, match=r"run.gpus: GPU 0 \(NVML 1, GPU-1c7e0a12.*\) is a MIG instance"):
        resolve([0], machine, visible="1", where="run.gpus")


def test_the_cuda_drivers_order_wins_and_is_mapped_by_uuid() -> None:
    # CUDA_DEVICE_ORDER=FASTEST_FIRST may number the cards unlike NVML: the driver's list decides.
    cuda = [CudaDevice(0, UUIDS[2], "0000:52:00.0"), CudaDevice(1, UUIDS[0], "0000:1b:00.0")]
    assert _nvml_indices([0, 1], cuda=cuda) == [2, 0]


def test_a_cuda_device_is_found_by_pci_bus_id_when_its_uuid_differs() -> None:
    cuda = [CudaDevice(0, "GPU-00000000-0000-0000-0000-000000000000", "0000:43:00.0")]
    assert _nvml_indices([0], cuda=cuda) == [1]


def test_a_cuda_device_nvml_does_not_list_is_refused() -> None:
    cuda = [CudaDevice(0, "GPU-00000000-0000-0000-0000-000000000000", "0000:99:00.0")]
    with pytest.raises(GpuMapError, match=r"CUDA device 0 .* is not among the GPUs NVML lists"):
        resolve([0], MACHINE, cuda=cuda)
    with pytest.raises(GpuMapError, match=r"CUDA device 0 \(MIG-.*\) is a MIG instance"):
        resolve([0], MACHINE, cuda=[CudaDevice(0, "MIG-5c3a9b1e-0d2f-5e6a-9b8c-1d2e3f4a5b6c", "0000:1b:00.0")])


def test_the_simulated_machine_goes_through_the_same_binding() -> None:
    sim = gpu_map.simulated_gpus(8, seed=5)
    (b,) = resolve([3], sim)
    assert (b.nvml_index, b.uuid) == (3, "SIM-0000000000000008")  # SimSpec(seed=5+3) reports this UUID
    with pytest.raises(GpuMapError, match="GPU 8 does not exist"):
        resolve([8], sim)


def _fake_pynvml(cards: list[PhysicalGpu], procs: dict[int, list[tuple[int, int]]]) -> types.ModuleType:
    m = types.ModuleType("pynvml")

    class NVMLError(Exception):
        pass

    m.NVMLError = NVMLError
    m.NVML_ERROR_LIBRARY_NOT_FOUND, m.NVML_ERROR_DRIVER_NOT_LOADED = 12, 9
    m.nvmlInit = m.nvmlShutdown = lambda: None
    m.nvmlDeviceGetCount = lambda: len(cards)
    m.nvmlDeviceGetHandleByIndex = lambda i: cards[i]
    m.nvmlDeviceGetName = lambda h: h.name.encode()
    m.nvmlDeviceGetUUID = lambda h: h.uuid
    m.nvmlDeviceGetPciInfo = lambda h: types.SimpleNamespace(busId=h.pci_bus_id.encode())
    m.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(total=80 * 2**30, used=0)
    m.nvmlDeviceGetPowerManagementDefaultLimit = lambda h: 700_000
    m.nvmlDeviceGetMigMode = lambda h: (int(h.mig), int(h.mig))
    m.nvmlDeviceGetComputeRunningProcesses = lambda h: [
        types.SimpleNamespace(pid=pid, usedGpuMemory=used) for pid, used in procs.get(h.index, [])
    ]
    return m


def test_the_machine_binding_reads_nvml_and_the_environment(monkeypatch) -> None:
    cards = [MACHINE[0], PhysicalGpu(1, UUIDS[1], PCI[1], "NVIDIA H100 80GB HBM3", mig=True), MACHINE[2]]
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml(cards, {2: [(4242, 3 * 2**30), (7, 0)]}))
    monkeypatch.setattr(gpu_map, "cuda_devices", lambda: None)  # no CUDA driver here
    assert gpu_map.machine_gpus() == cards  # the MIG mode read from NVML
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,0")
    assert [b.nvml_index for b in gpu_map.resolve_machine([0, 1])] == [2, 0]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    with pytest.raises(GpuMapError, match="MIG instance"):
        gpu_map.resolve_machine([0])
    # Other processes on a measured card: a warning that names them.
    (b,) = resolve([0], cards, visible="2")
    others = gpu_map.other_processes(b.nvml_index, exclude_pid=7)
    assert others == [(4242, 3 * 2**30)]
    message = gpu_map.other_process_warning(b, others)
    assert message is not None and "GPU 0 (NVML 2" in message and "pid 4242 (3072 MiB)" in message
    assert gpu_map.other_process_warning(b, []) is None


def test_run_gpus_is_the_one_key_and_sampler_gpus_names_it() -> None:
    base = '[[matrix]]\nmodels = ["synthetic:Qwen2-1.5B"]\nbatches = [1]\nprecisions = ["fp16"]\n'
    assert config.parse(base).run.gpus == (0,)
    assert config.parse("[run]\ngpus = [1, 0]\n" + base).run.gpus == (1, 0)
    assert config.parse("[run]\ngpus = [1, 0]\n" + base).to_dict()["run"] == {"gpus": (1, 0)}
    with pytest.raises(config.ConfigError, match=r"'sampler.gpus' is no longer a key; use run.gpus"):
        config.parse("[sampler]\ngpus = [0]\n" + base, "x.toml")
    with pytest.raises(config.ConfigError, match=r"x.toml: 'run.gpus' = \[0, 0\] is not allowed; expected a non-empty "
                                                  r"list of distinct CUDA ordinals"):
        config.parse("[run]\ngpus = [0, 0]\n" + base, "x.toml")


def test_a_gpu_that_does_not_exist_exits_2_and_writes_nothing(tmp_path: Path, capsys, monkeypatch) -> None:
    out = tmp_path / "x.wattscope"
    # The simulated machine has 8 cards: cuda:9 is not among them.
    assert cli.main(["run", "configs/quick.toml", "--sim", "--gpus", "0,9", "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("wattscope: error: --gpus: GPU 9 does not exist: this process sees 8 GPU(s), CUDA ordinals 0..7")
    assert not out.exists()
    # On a (fake) machine: an unmappable CUDA_VISIBLE_DEVICES, named, nothing written.
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml(MACHINE, {}))
    monkeypatch.setattr(gpu_map, "cuda_devices", lambda: None)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-deadbeef")
    assert cli.main(["run", "configs/quick.toml", "-o", str(out)]) == 2
    assert "entry 'GPU-deadbeef' matches no GPU's UUID" in capsys.readouterr().err
    assert not out.exists()


def test_a_windows_parts_survive_the_recording_format_and_one_gpu_windows_are_unchanged() -> None:
    import json

    from wattscope.events import Event

    one = Window(9, "c", "decode", "measure", 1, 1, 9, 10.0, 30.0, 2, 32, 64)
    assert "energy_parts_j" not in one.to_dict()  # as recorded before parts existed
    two = Window(9, "c", "decode", "measure", 1, 1, 9, 10.0, 30.0, 2, 32, 64, energy_parts_j=(12.5, 7.5))
    back = Event.from_dict(json.loads(json.dumps(two.to_dict())))
    assert back == two and back.energy_parts_j == (12.5, 7.5)
    assert Event.from_dict(json.loads(json.dumps(one.to_dict()))) == one


TWO_GPUS = """
name = "two-gpus"
[protocol]
min_rounds = 2
max_rounds = 2
max_warmup_rounds = 2
[run]
gpus = [0, 1]
[[matrix]]
models = ["synthetic:Yi-1.5-6B"]
batches = [8]
precisions = ["fp16"]
"""


@pytest.mark.process
def test_a_two_gpu_simulated_run_stores_each_gpus_part_of_every_window(tmp_path: Path) -> None:
    from wattscope.session import Session

    sweep = config.parse(TWO_GPUS, str(tmp_path / "two.toml"))
    session = Session(sweep, tmp_path / "g.wattscope", sim=True)
    session.start()
    assert session.wait(120)
    rec = wattscope.load(tmp_path / "g.wattscope")
    assert rec.meta["status"] == "completed"
    assert [g["binding"]["cuda_ordinal"] for g in rec.meta["gpus"]] == [0, 1]
    assert [g["binding"]["uuid"] for g in rec.meta["gpus"]] == [g["uuid"] for g in rec.meta["gpus"]]
    assert metrics.run_meta(rec.meta).tdp_w == 1400.0  # %TDP is of both cards' default limits
    assert metrics.run_meta(rec.meta).gpu_label == "2 × Simulated H100"
    windows = [e for e in rec.events() if isinstance(e, Window)]
    assert {w.role for w in windows} == {"idle", "warmup", "measure"}
    for w in windows:
        assert len(w.energy_parts_j) == 2 and all(p > 0 for p in w.energy_parts_j)
        assert math.fsum(w.energy_parts_j) == pytest.approx(w.energy_j, rel=1e-12)
    # Each part is that card's own counter: it matches the card's sampled power.
    df = rec.samples
    for i in (0, 1):
        card = df[df["gpu"] == i]
        w = max(windows, key=lambda w: w.duration_s)
        inside = card[(card["t_ns"] >= w.start_ns) & (card["t_ns"] <= w.end_ns)]
        assert w.energy_parts_j[i] == pytest.approx(inside["power_w"].mean() * w.duration_s, rel=0.1)
    # The cross-check integrates both cards' power, as the counter energy sums both.
    assert (rec.windows["integrated_j"] / rec.windows["energy_j"]).dropna().between(0.9, 1.1).all()
    # The screen draws one power row per card and, first, their total against both TDPs.
    import asyncio

    from mock_source import MockSource, snapshot_at

    from wattscope.tui.app import make_app

    events = list(rec.events())
    w = next(e for e in events if isinstance(e, Window) and e.phase == "decode" and e.role == "measure")
    snap = snapshot_at(events, (w.start_ns + w.end_ns) // 2)
    assert [g.index for g in snap.gpus] == [0, 1] and snap.tdp_w == 1400.0
    assert snap.gpu_name == "2 × Simulated H100"

    async def screen() -> str:
        app = make_app(MockSource(snap))
        async with app.run_test(size=(80, 30)) as pilot:
            await pilot.pause()
            update = app.screen._compositor.render_update(full=True)
            return "\n".join("".join(seg.text for seg in line) for line in update.strips)

    text = asyncio.run(screen())
    total = sum(g.latest_w for g in snap.gpus)
    assert f"2 GPUs {total:.0f} W  {100 * total / 1400:.0f}% of 1400 W TDP" in text
    for g in snap.gpus:
        assert f"GPU{g.index} {g.latest_w:.0f} W  {g.pct_tdp:.0f}% of 700 W TDP" in text
