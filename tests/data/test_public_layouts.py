"""CheXpert, NIH ChestX-ray14 and folder + CSV loaders on fixtures written in the real layouts."""

import numpy as np
import pytest
from PIL import Image

from cxr_jax.data import sources
from cxr_jax.data.sources import public
from tests.conftest import data_spec


def _spec(source, path, split, **options):
    return data_spec(source, path, split, **options)


def _image(path, size=(20, 16), value=100):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(size[::-1], value, np.uint8)).save(path)


def _write_chexpert(parent):
    root = parent / "CheXpert-v1.0-small"
    header = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *public.CHEXPERT_OBSERVATIONS]
    blank = [""] * len(public.CHEXPERT_OBSERVATIONS)

    def row(path, view, **values):
        cells = list(blank)
        for name, v in values.items():
            cells[public.CHEXPERT_OBSERVATIONS.index(name.replace("_", " "))] = v
        return ",".join([f"CheXpert-v1.0-small/{path}", "Male", "60", view, "PA", *cells])

    rows = [row("train/p1/s1/view1_frontal.jpg", "Frontal", No_Finding="1.0"),
            row("train/p2/s1/view1_frontal.jpg", "Frontal", Cardiomegaly="-1.0", Edema="0.0"),
            row("train/p2/s1/view2_lateral.jpg", "Lateral", Edema="1.0"),
            row("train/p3/s1/view1_frontal.jpg", "Frontal", Support_Devices="1.0", Pleural_Effusion="1.0")]
    root.mkdir(parents=True)
    (root / "train.csv").write_text("\n".join([",".join(header), *rows]) + "\n")
    for r in rows:
        _image(parent / r.split(",")[0])
    return root


@pytest.mark.parametrize("policy,cardiomegaly,label", [("zeros", 0, -1), ("ones", 1, 1), ("ignore", -1, -1)])
def test_chexpert_uncertain_policy_and_frontal_filter(tmp_path, policy, cardiomegaly, label):
    root = _write_chexpert(tmp_path)
    data = sources.load(_spec("chexpert", root, "train", uncertain=policy), image_size=16, seed=0)
    assert len(data["image"]) == 3  # The lateral view is dropped.
    col = public.CHEXPERT_OBSERVATIONS.index("Cardiomegaly")
    assert data["findings"][1, col] == cardiomegaly
    assert data["findings"][1, public.CHEXPERT_OBSERVATIONS.index("Edema")] == 0
    assert data["findings"][0, col] == -1  # Blank: unknown, whatever the policy.
    np.testing.assert_array_equal(data["label"], [0, label, 1])
    everything = sources.load(_spec("chexpert", root, "train", frontal_only=False), image_size=16, seed=0)
    assert len(everything["image"]) == 4


def test_chexpert_errors_name_file_and_row(tmp_path):
    root = _write_chexpert(tmp_path)
    (tmp_path / "CheXpert-v1.0-small/train/p3/s1/view1_frontal.jpg").unlink()
    with pytest.raises(sources.DataError, match=r"train.csv: row 5: image .*p3.* not found"):
        sources.load(_spec("chexpert", root, "train"), image_size=16, seed=0)
    text = (root / "train.csv").read_text().replace("1.0,", "2.0,", 1)
    (root / "train.csv").write_text(text)
    with pytest.raises(sources.DataError, match="row 2: No Finding must be 1, 0, -1 or blank"):
        sources.load(_spec("chexpert", root, "train"), image_size=16, seed=0)
    with pytest.raises(sources.DataError, match="uncertain policy must be one of"):
        sources.load(_spec("chexpert", root, "train", uncertain="maybe"), image_size=16, seed=0)


def _write_nih14(root):
    entries = [("a.png", "No Finding"), ("b.png", "Nodule|Effusion"), ("c.png", "Mass")]
    lines = ["Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position"]
    lines += [f"{n},{f},0,{i},50,M,PA" for i, (n, f) in enumerate(entries)]
    root.mkdir(parents=True, exist_ok=True)
    (root / "Data_Entry_2017.csv").write_text("\n".join(lines) + "\n")
    (root / "BBox_List_2017.csv").write_text(
        "Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
        "b.png,Nodule,2,4,4,2\nb.png,Effusion,10,0,4,4\nc.png,Mass,0,0,2,2\n")
    (root / "train_val_list.txt").write_text("a.png\nb.png\n")
    (root / "test_list.txt").write_text("c.png\n")
    _image(root / "images_001/images/a.png", (16, 16))
    _image(root / "images_001/images/b.png", (16, 16))
    _image(root / "images/c.png", (16, 16))


def test_nih14_labels_boxes_and_splits(tmp_path):
    _write_nih14(tmp_path)
    data = sources.load(_spec("nih14", tmp_path, "train"), image_size=32, seed=0)
    assert list(data["name"]) == ["a.png", "b.png"]
    np.testing.assert_array_equal(data["label"], [0, 1])
    assert data["findings"][1, public.NIH_FINDINGS.index("Nodule")] == 1
    assert data["findings"][1].sum() == 2
    # 16 px → 32 px: box edges scale by 2.
    np.testing.assert_allclose(data["boxes"][1, 0], [4, 8, 12, 12])
    np.testing.assert_allclose(data["box"][1], [4, 0, 28, 12])
    assert np.isnan(data["box"][0]).all() and np.isnan(data["boxes"][0]).all()
    test = sources.load(_spec("nih14", tmp_path, "test"), image_size=32, seed=0)
    assert list(test["name"]) == ["c.png"] and sources.describe(test)["num_with_boxes"] == 1


def test_nih14_errors(tmp_path):
    _write_nih14(tmp_path)
    (tmp_path / "images/c.png").unlink()
    with pytest.raises(sources.DataError, match=r"image c.png listed in Data_Entry_2017.csv \(row 4\) is missing"):
        sources.load(_spec("nih14", tmp_path, "all"), image_size=16, seed=0)
    with pytest.raises(sources.DataError, match="nih14 split must be train, test or all"):
        sources.load(_spec("nih14", tmp_path, "valid"), image_size=16, seed=0)


def test_folder_with_split_labels_text_and_masks(tmp_path):
    (tmp_path / "metadata.csv").write_text(
        "image,label,split,text,mask\n"
        "x/1.png,1,train,opacity left,m/1.png\n"
        "x/2.png,,train,,\n"
        "x/3.png,0,valid,clear,\n")
    for i in (1, 2, 3):
        _image(tmp_path / f"x/{i}.png", (8, 8))
    _image(tmp_path / "m/1.png", (8, 8), value=255)
    data = sources.load(_spec("folder", tmp_path, "train"), image_size=8, seed=0)
    np.testing.assert_array_equal(data["label"], [1, -1])
    assert list(data["text"]) == ["opacity left", ""]
    np.testing.assert_array_equal(data["has_mask"], [True, False])
    assert data["mask_lesion"][0].all() and not data["mask_lesion"][1].any()
    assert len(sources.load(_spec("folder", tmp_path, "all"), image_size=8, seed=0)["image"]) == 3
    (tmp_path / "metadata.csv").write_text("image,label\nx/1.png,yes\n")
    with pytest.raises(sources.DataError, match="row 2: label must be 0, 1 or blank"):
        sources.load(_spec("folder", tmp_path, "all"), image_size=8, seed=0)
