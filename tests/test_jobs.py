"""datapipe.jobs: where outputs go, what is refused before a run, and when a job counts as finished."""
import errno
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest

from datapipe.image_io import write_image
from datapipe.jobs import PlanError, PlanWarning, check_writable, plan_jobs


def _images(root: Path, names: list[str]) -> Path:
    for name in names:
        write_image(root / name, np.zeros((8, 8, 3), np.uint8))
    return root


@pytest.mark.parametrize("folder, option", [("cmp", "save_cmp"), ("estimates", "save_estimate"),
                                            ("CMP", "save_cmp")])
def test_an_input_sub_folder_named_like_a_side_folder_is_refused(tmp_path, folder, option):
    """Aligned layout, --recursive: `x.png` and `cmp/x.png` would both give OUT/cmp/x.png (a
    comparison over a restoration); the plan is refused, naming the sub-folder and the option."""
    src = _images(tmp_path / "in", ["x.png", f"{folder}/x.png"])
    out = tmp_path / "out"
    with pytest.raises(PlanError, match=rf"sub-folder '{folder}/'.*leave out --{option.replace('_', '-')}"):
        plan_jobs(src, out, True, 1, **{option: True})
    assert not out.exists()
    # without the side output, or in the whole-photo layout (restorations under restored_image/), no clash
    assert len(plan_jobs(src, out, True, 1)) == 2
    jobs = plan_jobs(src, out, True, 1, subdir="restored_image", **{option: True})
    written = [p for j in jobs for p in j.all_outputs]
    assert len({p.as_posix().lower() for p in written}) == len(written) == 4


def test_a_side_folder_named_by_the_caller_is_kept_apart_too(tmp_path):
    src = _images(tmp_path / "in", ["cropped_faces/a.png"])
    with pytest.raises(PlanError, match="cropped_faces side outputs") as info:
        plan_jobs(src, tmp_path / "out", True, 1, also_writes=("cropped_faces",))
    assert "leave out" not in str(info.value)


def test_an_input_folder_inside_the_output_folder_says_so(tmp_path):
    out = tmp_path / "out"
    src = _images(out / "photos", ["a.png"])
    with pytest.raises(PlanError, match="lies inside the output folder") as info:
        plan_jobs(src, out, True, 1)
    assert "--recursive" not in str(info.value)
    # an input folder holding the output folder, whose only images are outputs of an earlier run
    src = tmp_path / "in"
    _images(src / "restored", ["a.png", "restored_image/a.png"])
    with pytest.raises(PlanError, match=r"the 2 image\(s\) found all lie inside the output folder"):
        plan_jobs(src, src / "restored", True, 1)


def test_an_output_named_like_an_image_file_warns_that_it_is_a_folder(tmp_path):
    src = _images(tmp_path / "in", ["a.png"])
    with pytest.warns(PlanWarning, match="result.png' looks like an image file name.*folder"):
        jobs = plan_jobs(src, tmp_path / "result.png", False, 1, subdir="restored_image")
    assert jobs[0].outputs == [tmp_path / "result.png" / "restored_image" / "a.png"]
    (tmp_path / "made.png").mkdir()  # an existing folder is what the user chose: no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plan_jobs(src, tmp_path / "made.png", False, 1)
        plan_jobs(src, tmp_path / "results", False, 1)


def test_the_unwritable_folder_is_named(tmp_path, monkeypatch):
    def refused(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refused)
    out = tmp_path / "locked"
    out.mkdir()
    with pytest.raises(PlanError, match=f"cannot write to the output folder {out}: Permission denied"):
        check_writable(out)
    with pytest.raises(PlanError, match=f"cannot write to {out} \\(to create the output folder {out / 'new'}\\)"):
        check_writable(out / "new")


def test_a_job_is_finished_only_when_every_requested_output_exists(tmp_path):
    """Adding --save-cmp to a finished run, or a failed side output, leaves the job to be done."""
    src = _images(tmp_path / "in", ["a.png"])
    out = tmp_path / "out"
    (job,) = plan_jobs(src, out, False, 2)
    assert not job.finished and job.missing == job.outputs == [out / "a_s0.png", out / "a_s1.png"]
    for path in job.outputs:
        write_image(path, np.zeros((8, 8, 3), np.uint8))
    assert job.finished and job.missing == []

    (job,) = plan_jobs(src, out, False, 2, save_cmp=True, save_estimate=True)
    assert job.all_outputs == job.outputs + [out / "estimates" / "a.png", out / "cmp" / "a.png"]
    assert not job.finished and job.missing == [out / "estimates" / "a.png", out / "cmp" / "a.png"]
    write_image(out / "estimates" / "a.png", np.zeros((8, 8, 3), np.uint8))
    assert not job.finished and job.missing == [out / "cmp" / "a.png"]
    (out / "cmp" / "a.png").mkdir(parents=True)  # a folder of that name is not the output
    assert not job.finished
