"""The ``truth.star`` of a data set: its columns, and readers of classes, parameters, CTF and directions."""
import numpy as np

TRUTH_COLUMNS = ["rlnImageId", "rlnClassNumber", "rlnAnglePsi", "rlnOriginX", "rlnOriginY", "rlnIsFlip"]
CTF_TRUTH_COLUMNS = [("rlnOpticsGroup", "optics_group"), ("rlnDefocusU", "defocus_u"),
                     ("rlnDefocusV", "defocus_v"), ("rlnDefocusAngle", "defocus_angle"),
                     ("rlnPhaseShift", "phase_shift"), ("rlnCtfBfactor", "bfactor"),
                     ("rlnVoltage", "voltage"), ("rlnSphericalAberration", "cs"),
                     ("rlnAmplitudeContrast", "amplitude_contrast")]


def _direction_angles(directions):
    """RELION's (rot, tilt) in degrees of unit directions: d = (cos rot sin tilt, sin rot sin tilt, cos tilt)."""
    rot = np.rad2deg(np.arctan2(directions[:, 1], directions[:, 0]))
    tilt = np.rad2deg(np.arccos(np.clip(directions[:, 2], -1.0, 1.0)))
    return rot, tilt


def read_truth(path):
    """``(classes 0-based, truth (N, 4))`` from a ``truth.star`` written by :func:`make_dataset`,
    in rlnImageId order."""
    from ..star import read_star
    rows = sorted(read_star(path, "truth"), key=lambda r: int(r.rlnImageId))
    classes = np.array([int(r.rlnClassNumber) - 1 for r in rows], dtype=np.int64)
    truth = np.array([[float(r.rlnAnglePsi), float(r.rlnOriginX), float(r.rlnOriginY), float(r.rlnIsFlip)]
                      for r in rows]).reshape(-1, 4)
    return classes, truth


def read_truth_ctf(path):
    """The per-particle CTF truth of a ``truth.star`` (rlnImageId order) as :meth:`CtfSimulation.draw`
    gives it (feed it to :func:`particle_ctfs`), or None for a data set made without CTF."""
    from ..star import read_star
    table = read_star(path, "truth")
    if not table.hasColumn("rlnDefocusU"):
        return None
    rows = sorted(table, key=lambda r: int(r.rlnImageId))
    out = {key: np.array([float(getattr(r, column)) for r in rows]) for column, key in CTF_TRUTH_COLUMNS}
    out["optics_group"] = out["optics_group"].astype(np.int64)
    out["pixel_size"] = float(rows[0].rlnImagePixelSize) if rows else None
    return out


def read_truth_directions(path):
    """True unit directions ``(N, 3)`` (rlnImageId order) of a continuous data set's ``truth.star``,
    or None if it has none."""
    from ..star import read_star
    table = read_star(path, "truth")
    if not table.hasColumn("rlnAngleTilt"):
        return None
    rows = sorted(table, key=lambda r: int(r.rlnImageId))
    rot, tilt = (np.deg2rad([float(getattr(r, c)) for r in rows]) for c in ("rlnAngleRot", "rlnAngleTilt"))
    return np.stack([np.cos(rot) * np.sin(tilt), np.sin(rot) * np.sin(tilt), np.cos(tilt)], axis=1)
