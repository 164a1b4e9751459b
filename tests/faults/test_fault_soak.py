"""The soak with faults on a schedule (camera silent, PLC away, decision log locked, broken model hot-reloaded)
ends with every garment accounted for. A short run of ``textile-sorter bench-faults``'s code path."""

from __future__ import annotations

import pytest
import yaml
from _onnx_fixtures import make_checkpoint
from _modbus_fixtures import free_port
from test_serve import BINS, REPO

from sorting.apps.fault_soak import SoakConfig, run_fault_soak
from sorting.models.export import export_checkpoint

pytestmark = [pytest.mark.faults, pytest.mark.slow]


def test_a_soak_with_faults_accounts_for_every_garment(tmp_path):
    model = export_checkpoint(make_checkpoint(tmp_path / "tiny.pt"), tmp_path / "tiny.onnx").path
    (tmp_path / "bins.yaml").write_text(yaml.safe_dump(BINS))
    report = run_fault_soak(SoakConfig(line=REPO / "serving" / "line-colour-6bin.yaml", model=model,
                                       bins=tmp_path / "bins.yaml", out_dir=tmp_path / "soak", minutes=0.5,
                                       period_s=16.0, plc_port=free_port(), progress=False))
    assert set(report.faults) == {"camera", "plc", "log", "model"}
    assert all(report.checks.values()), report.markdown()
    assert report.reloads["refused"] >= 1 and "decision_log" in report.alarms_seen
    assert report.garments_seen >= report.garments - 2 and report.decisions > 20
    assert report.missed_by_reason.get("disconnected", 0) + report.missed_by_reason.get("late", 0) > 0
