"""The packages' public surface resolves, and interp stays free of model libraries."""

import subprocess
import sys

import hooks
import interp
import modality_lens


def test_every_exported_name_resolves():
    for package in (hooks, interp, modality_lens):
        for name in package.__all__:
            assert getattr(package, name) is not None, f"{package.__name__}.{name}"


def test_importing_interp_analysis_does_not_import_model_libraries():
    code = ("import sys, interp\n"
            "interp.fit_following, interp.entropy, interp.count_switches, interp.candidate_pair, interp.summarise\n"
            "bad = [m for m in ('torch', 'transformers', 'nnsight') if m in sys.modules]\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True)
