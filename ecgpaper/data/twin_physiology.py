"""The synthetic twin's physiology (``ecgpaper.data.synthetic``): twelve 10 s
leads of one patient of a class, from a cardiac-dipole model.

Each wave of a beat (P, q, R, S, T, ST injury current) is a Gaussian in time
with a direction in the body; a lead records the projection of that dipole on
its lead vector. NORM: sinus rhythm; MI: ST elevation facing one territory
(acute infarction); HMI: Q waves, lost R and inverted T (old infarction); HB:
atrial fibrillation, premature ventricular beats or Wenckebach block. The class
lives in these waveforms only (``twin_render`` draws every class's page alike).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# --------------------------------------------------------------------------
# Recording (docs/design_notes.md, "Page geometry")
# --------------------------------------------------------------------------
SAMPLE_RATE_HZ = 500.0
RECORD_SECONDS = 10.0

# Lead vectors in a body frame: x to the patient's left, y inferior, z anterior.
# I and II are measured; III, aVR, aVL, aVF are derived from them as an ECG
# machine does, so Einthoven's law holds for signal and noise alike.
_MEASURED_LEADS = ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6")
_PRECORDIAL_ANGLE_DEG = {"V1": 115, "V2": 95, "V3": 72, "V4": 48, "V5": 20, "V6": 0}
_PRECORDIAL_GAIN = {"V1": 1.1, "V2": 1.5, "V3": 1.5, "V4": 1.4, "V5": 1.2, "V6": 1.0}
_DERIVED_LEADS = {  # lead: (weight of I, weight of II)
    "III": (-1.0, 1.0),
    "aVR": (-0.5, -0.5),
    "aVL": (1.0, -0.5),
    "aVF": (-0.5, 1.0),
}


def _measured_lead_vectors() -> np.ndarray:
    rows = [(1.0, 0.0, 0.0), (0.5, np.sqrt(3) / 2, 0.0)]
    for lead, angle in _PRECORDIAL_ANGLE_DEG.items():
        a = np.radians(angle)
        rows.append(tuple(_PRECORDIAL_GAIN[lead] * np.array((np.cos(a), 0.0, np.sin(a)))))
    return np.array(rows)


_LEAD_VECTORS = _measured_lead_vectors()
_ALL_LEAD_VECTORS = np.vstack(
    [_LEAD_VECTORS] + [w1 * _LEAD_VECTORS[0] + w2 * _LEAD_VECTORS[1] for w1, w2 in _DERIVED_LEADS.values()]
)

#: Directions pointing at the infarcted wall: leads facing it show the injury
#: (ST elevation, Q waves), leads opposite it the reciprocal change.
_TERRITORIES = {
    "anterior": (0.2, -0.35, 0.9),  # V1-V4, reciprocal II/III/aVF
    "inferior": (-0.2, 0.95, -0.2),  # II/III/aVF, reciprocal I/aVL
    "lateral": (0.9, -0.35, -0.1),  # I/aVL/V5/V6, reciprocal III/aVF/V1
}


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1 + np.tanh(0.5 * x))


def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=float)
    return v / np.linalg.norm(v)


# --------------------------------------------------------------------------
# Physiology: beats, dipole waves, 12 leads
# --------------------------------------------------------------------------
@dataclass
class _Waves:
    """Gaussian dipole components: centre (s), width (s), amplitude (mV), direction;
    and the R times of the beats conducted through the normal pathway."""

    centres: list = field(default_factory=list)
    widths: list = field(default_factory=list)
    amplitudes: list = field(default_factory=list)
    directions: list = field(default_factory=list)
    conducted: list = field(default_factory=list)

    def add(self, centre: float, width: float, amplitude: float, direction) -> None:
        self.centres.append(centre)
        self.widths.append(width)
        self.amplitudes.append(amplitude)
        self.directions.append(direction)

    def dipole(self, t: np.ndarray) -> np.ndarray:
        """The summed dipole on the uniform time grid ``t``, shape (3, len(t)).

        Each Gaussian is evaluated within 5 widths of its centre only."""
        total = np.zeros((3, len(t)))
        step = t[1] - t[0]
        for centre, width, amplitude, direction in zip(self.centres, self.widths, self.amplitudes, self.directions):
            lo = max(0, int((centre - 5 * width - t[0]) / step))
            hi = min(len(t), int((centre + 5 * width - t[0]) / step) + 2)
            if lo < hi:
                shape = np.exp(-0.5 * ((t[lo:hi] - centre) / width) ** 2)
                total[:, lo:hi] += amplitude * np.asarray(direction)[:, None] * shape
        return total


def _lead_scale(direction) -> float:
    """Largest deflection (mV) a unit dipole along ``direction`` makes in any lead."""
    return float(np.abs(_ALL_LEAD_VECTORS @ direction).max())


def _patient(rng: np.random.Generator) -> dict:
    """Normal sinus-beat morphology of one patient (axis, amplitudes, intervals)."""
    axis = np.radians(rng.uniform(-10, 75))
    r_dir = _unit((np.cos(axis), np.sin(axis), rng.uniform(-0.15, 0.25)))
    return {
        "pr": rng.uniform(0.13, 0.20),
        "p": (rng.uniform(0.020, 0.028), rng.uniform(0.10, 0.20), _unit((0.55, 0.8, rng.uniform(0.0, 0.3)))),
        "q": (0.008, rng.uniform(0.08, 0.18), _unit((-0.7, 0.1, 0.7))),
        "r": (rng.uniform(0.009, 0.012), rng.uniform(1.0, 1.5), r_dir),
        "s": (rng.uniform(0.009, 0.012), rng.uniform(0.45, 0.8), _unit((-0.25, -0.35, -0.9))),
        "t": (rng.uniform(0.038, 0.05), rng.uniform(0.22, 0.38), _unit(r_dir + np.array((0.0, 0.0, 0.6)))),
        "t_offset": rng.uniform(0.27, 0.31),  # at RR = 1 s; scales with sqrt(RR)
        "st": None,  # (amplitude, direction) of an injury current
        "q_path": None,  # (width, amplitude, direction) of a pathological Q
    }


def _apply_acute_mi(patient: dict, rng: np.random.Generator) -> None:
    """ST elevation of 0.1-0.4 mV facing one territory, reciprocal depression, hyperacute T."""
    territory = str(rng.choice(list(_TERRITORIES)))
    u = _unit(_TERRITORIES[territory])
    st_mv = rng.uniform(0.1, 0.4)
    patient["st"] = (st_mv / _lead_scale(u), u)
    width, amp, t_dir = patient["t"]
    hyperacute = amp * t_dir + rng.uniform(0.25, 0.5) / _lead_scale(u) * u
    patient["t"] = (width * 1.2, float(np.linalg.norm(hyperacute)), _unit(hyperacute))


def _apply_old_mi(patient: dict, rng: np.random.Generator) -> None:
    """Wide deep Q waves, lost R and inverted T facing one territory; ST isoelectric."""
    territory = str(rng.choice(list(_TERRITORIES)))
    u = _unit(_TERRITORIES[territory])
    patient["q_path"] = (rng.uniform(0.012, 0.016), rng.uniform(0.3, 0.6) / _lead_scale(u), -u)
    width, amp, r_dir = patient["r"]
    r_vec = amp * r_dir - 0.5 * max(float(amp * r_dir @ u), 0.0) * u
    patient["r"] = (width, float(np.linalg.norm(r_vec)), _unit(r_vec))
    width, amp, t_dir = patient["t"]
    inverted = amp * t_dir - rng.uniform(0.45, 0.75) / _lead_scale(u) * u
    patient["t"] = (width, float(np.linalg.norm(inverted)), _unit(inverted))


def _sinus_times(rng: np.random.Generator, rr: float, start: float, stop: float) -> np.ndarray:
    """Beat times of a sinus rhythm with respiratory variation."""
    period, phase = rng.uniform(3.0, 6.0), rng.uniform(0, 2 * np.pi)
    times, t = [], start + rng.uniform(0, rr)
    while t < stop:
        times.append(t)
        t += rr * (1 + 0.04 * np.sin(2 * np.pi * t / period + phase) + rng.normal(0, 0.01))
    return np.array(times)


def _add_sinus_beat(waves: _Waves, patient: dict, t: float, rr: float, pr: float | None) -> None:
    waves.conducted.append(t)
    if pr is not None:
        waves.add(t - pr, *patient["p"])
    waves.add(t - 0.028, *patient["q"])
    if patient["q_path"] is not None:
        waves.add(t - 0.018, *patient["q_path"])
    waves.add(t, *patient["r"])
    waves.add(t + 0.026, *patient["s"])
    waves.add(t + patient["t_offset"] * np.sqrt(rr), *patient["t"])


def _add_pvc(waves: _Waves, rng: np.random.Generator, t: float) -> None:
    """A premature ventricular beat: wide bizarre QRS, discordant T, no P."""
    main = _unit(rng.normal(size=3))
    width = rng.uniform(0.022, 0.032)
    waves.add(t, width, rng.uniform(1.0, 1.8), main)
    waves.add(t + 0.05, width, rng.uniform(0.3, 0.6), _unit(-main + 0.5 * rng.normal(size=3)))
    waves.add(t + 0.30, 0.06, rng.uniform(0.25, 0.45), -main)


def _heart_beats(class_code: str, rng: np.random.Generator, patient: dict):
    """Waves of every beat from -1.5 s to 11 s, the QRS times and any fibrillatory wave.

    NORM, MI, HMI: sinus rhythm, 55-100 bpm. HB: atrial fibrillation
    (irregular RR, no P, fibrillatory baseline), premature ventricular beats,
    or Wenckebach block (lengthening PR, dropped QRS).
    """
    start, stop = -1.5, RECORD_SECONDS + 1.0
    waves = _Waves()
    fibrillation = None
    rhythm = str(rng.choice(["af", "pvc", "wenckebach"], p=[0.4, 0.4, 0.2])) if class_code == "HB" else "sinus"
    if rhythm == "af":
        rr_mean, irregularity = 60 / rng.uniform(70, 130), rng.uniform(0.15, 0.3)
        qrs, t = [], start + rng.uniform(0, rr_mean)
        while t < stop:
            qrs.append(t)
            t += float(np.clip(rr_mean * np.exp(rng.normal(0, irregularity)), 0.3, 2.0))
        for t in qrs:
            _add_sinus_beat(waves, patient, t, rr_mean, pr=None)
        fibrillation = (rng.uniform(4, 8, size=4), rng.uniform(0, 2 * np.pi, size=4), rng.uniform(0.03, 0.07))
    elif rhythm == "wenckebach":
        pp, group = 60 / rng.uniform(60, 100), int(rng.integers(3, 6))
        p_times = _sinus_times(rng, pp, start, stop)
        qrs = []
        for i, p_time in enumerate(p_times):
            position = i % group
            if position == group - 1:  # blocked P wave
                waves.add(p_time, *patient["p"])
                continue
            pr = patient["pr"] + 0.08 * position
            qrs.append(p_time + pr)
            _add_sinus_beat(waves, patient, p_time + pr, pp, pr)
    else:
        rr = 60 / rng.uniform(55, 100)
        qrs = list(_sinus_times(rng, rr, start, stop))
        premature = np.zeros(len(qrs), bool)
        if rhythm == "pvc":
            premature = rng.random(len(qrs)) < rng.uniform(0.1, 0.3)
            premature[1:] &= ~premature[:-1]  # no couplets
            visible = np.flatnonzero((np.array(qrs) > 1.0) & (np.array(qrs) < RECORD_SECONDS - 1.0))
            forced = rng.choice(visible)  # at least one on the page
            premature[[forced - 1, forced, forced + 1]] = (False, True, False)
            premature[0] = False
        for i, t in enumerate(qrs):
            if premature[i]:
                qrs[i] = qrs[i - 1] + rng.uniform(0.55, 0.7) * (t - qrs[i - 1])
                _add_pvc(waves, rng, qrs[i])
            else:
                _add_sinus_beat(waves, patient, t, rr, patient["pr"])
    return waves, np.array(qrs), fibrillation


def simulate_leads(class_code: str, rng: np.random.Generator):
    """Twelve 10 s leads (mV, sampled at SAMPLE_RATE_HZ) and the QRS times (s) of the record."""
    patient = _patient(rng)
    if class_code == "MI":
        _apply_acute_mi(patient, rng)
    elif class_code == "HMI":
        _apply_old_mi(patient, rng)
    waves, qrs, fibrillation = _heart_beats(class_code, rng, patient)
    t = np.arange(int(RECORD_SECONDS * SAMPLE_RATE_HZ)) / SAMPLE_RATE_HZ

    dipole = rng.uniform(0.75, 1.3) * waves.dipole(t)
    if patient["st"] is not None:  # injury current from the J point to the T peak of each beat
        amp, direction = patient["st"]
        plateau = np.zeros_like(t)
        for r in waves.conducted:
            end = r + 0.9 * patient["t_offset"]  # near the T peak (at RR = 1 s)
            plateau += _sigmoid((t - r - 0.04) / 0.006) * _sigmoid((end - t) / 0.04)
        dipole += amp * direction[:, None] * plateau
    if fibrillation is not None:
        freqs, phases, amp = fibrillation
        f_wave = amp * np.sin(2 * np.pi * freqs[:, None] * t + phases[:, None]).sum(0) / 2
        dipole += _unit((-0.3, 0.6, 0.7))[:, None] * f_wave

    measured = _LEAD_VECTORS @ dipole
    n = len(_MEASURED_LEADS)
    wander_freq, wander_phase = rng.uniform(0.05, 0.4, size=(n, 1)), rng.uniform(0, 2 * np.pi, size=(n, 1))
    measured += rng.uniform(0, 0.15, size=(n, 1)) * np.sin(2 * np.pi * wander_freq * t + wander_phase)
    noise = rng.normal(0, rng.uniform(0.01, 0.04), size=measured.shape)
    kernel = np.ones(4) / 4  # the recorder's low-pass filter
    measured += np.array([np.convolve(row, kernel, mode="same") for row in noise])

    leads = dict(zip(_MEASURED_LEADS, measured))
    for lead, (w1, w2) in _DERIVED_LEADS.items():
        leads[lead] = w1 * leads["I"] + w2 * leads["II"]
    return leads, qrs[(qrs >= 0) & (qrs < RECORD_SECONDS)]
