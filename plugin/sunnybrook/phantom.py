"""Synthetic Sunnybrook-like data in the exact layout of the LV Segmentation Challenge release.

``generate(out_dir, cases=15, seed=0)`` writes

    out_dir/challenge_training/<case>/IM-<series>-<NNNN>.dcm
    out_dir/TrainingDataContours/<CASEDIR>/contours-manual/IRCCI-expert/
        IM-0001-<NNNN>-{i,o,p1,p2}contour-manual.txt

with the 15 real case names and SAX series numbers. Image numbers follow the real scheme of
20 cardiac phases per slice position: image = slice * 20 + phase + 1, end-diastole (ED) is
phase 0 and end-systole (ES) a phase around 7-9. Only the contoured phases are written.

Each image is a 256 x 256 short-axis slice of a torso: subcutaneous fat and chest-wall muscle,
two lungs, liver, spine, right ventricle, and a left ventricle whose bright blood pool is ringed
by darker myocardium with papillary-muscle blobs. Cases differ in position (breathing, patient
placement), heart size and pixel spacing; slices shrink from base to apex and between ED and
ES. The image gets a slight blur (partial volume), a smooth multiplicative bias field and
Rician noise, and is stored as 16-bit unsigned with 12 bits used, like a scanner would.

The default layout has 260 inner contours (234 train / 26 val at 10 %), like the release:
cases 1-10 have 9 slices with the apical ES contour missing (17 each), cases 11-15 have 18.
Deterministic for a given seed (numpy Generator seeded per case, deterministic UIDs).

The summary's ``truth`` gives, per case, every contoured slice's closed-form endocardial (and at
ED epicardial) area in mm² and the LV function they define (EDV, ESV, SV, EF, myocardial mass):
tests check the clinical evaluation against it.
"""

import math
import os

import numpy as np

from caffeseg.plugin.sunnybrook import layout

IMAGE_SIZE = 256
PHASES_PER_SLICE = 20
MAX_VALUE = 4095  # Bits Stored 12
SLICE_SPACING_MM = 10.0  # 8 mm slices with a 2 mm gap, as in the release

# Tissue intensities on the 12-bit scale (bright blood in SSFP cine, dark myocardium).
_FAT, _MUSCLE, _LUNG, _LIVER, _MEDIASTINUM = 1500, 560, 70, 720, 480
_LV_BLOOD, _RV_BLOOD, _MYOCARDIUM, _PAPILLARY, _BONE = 1900, 1700, 520, 600, 300


def _ellipse(xx, yy, cx, cy, ax, ay, angle=0.0):
    c, s = math.cos(angle), math.sin(angle)
    dx, dy = xx - cx, yy - cy
    u = (dx * c + dy * s) / ax
    v = (-dx * s + dy * c) / ay
    return u * u + v * v <= 1.0


class _CaseAnatomy:
    """Per-case random anatomy (position, sizes, spacing) drawn from the case's generator."""

    def __init__(self, rng):
        self.spacing = float(rng.uniform(1.25, 1.5))
        self.torso_center = (128 + rng.uniform(-8, 8), 132 + rng.uniform(-6, 6))
        self.torso_axes = (rng.uniform(100, 114), rng.uniform(74, 86))
        self.heart_offset = (rng.uniform(12, 22), rng.uniform(-24, -14))
        self.lv_radius = rng.uniform(19.0, 22.0)           # ED cavity radius at the base (px)
        self.myo_area = math.pi * ((self.lv_radius + rng.uniform(7.5, 9.5)) ** 2
                                   - self.lv_radius ** 2)
        self.shape_phase = rng.uniform(0, 2 * math.pi, size=2)
        self.shape_amp = (rng.uniform(0.03, 0.07), rng.uniform(0.01, 0.03))
        self.es_factor = rng.uniform(0.72, 0.80)
        self.es_phase = int(rng.integers(7, 10))
        self.rr_ms = rng.uniform(800, 1000)
        self.base_location = rng.uniform(-20, 20)
        self.noise_sigma = rng.uniform(30, 45)
        self.bias = rng.normal(0, 1, size=6)

    def cavity_radius(self, t, es):
        """t in [0, 1] from base to apex."""
        size = 1.0 - 0.28 * t ** 1.4
        return self.lv_radius * size * (self.es_factor if es else 1.0)

    def profile_area(self, r):
        """Closed-form area (px²) inside ``radial_profile(θ, r)``: ½∫R(θ)²dθ = πr²(1 + (a2² + a3²)/2)
        (the cross term of the two harmonics integrates to zero)."""
        a2, a3 = self.shape_amp
        return math.pi * r * r * (1.0 + (a2 * a2 + a3 * a3) / 2.0)

    def radial_profile(self, theta, r):
        a2, a3 = self.shape_amp
        p2, p3 = self.shape_phase
        return r * (1 + a2 * np.cos(2 * (theta - p2)) + a3 * np.cos(3 * theta + p3))


def _render(anat, rng, t, es, breath):
    """Return (uint16 image, lv centre, cavity radius, outer radius, papillary blobs)."""
    n = IMAGE_SIZE
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float64)
    tcx, tcy = anat.torso_center[0] + breath[0], anat.torso_center[1] + breath[1]
    ax, ay = anat.torso_axes
    img = np.zeros((n, n), dtype=np.float64)
    img[_ellipse(xx, yy, tcx, tcy, ax, ay)] = _FAT
    img[_ellipse(xx, yy, tcx, tcy, ax - 7, ay - 7)] = _MUSCLE
    img[_ellipse(xx, yy, tcx, tcy, ax - 15, ay - 13)] = _MEDIASTINUM
    # Lungs either side of the mediastinum (image left = patient right).
    for side in (-1, 1):
        img[_ellipse(xx, yy, tcx + side * 0.52 * ax, tcy - 0.05 * ay, 0.33 * ax, 0.62 * ay,
                     side * 0.25)] = _LUNG
    # Liver low on the patient's right, rising into the slice with the breath.
    liver = _ellipse(xx, yy, tcx - 0.45 * ax, tcy + 0.5 * ay - breath[1], 0.42 * ax, 0.3 * ay, -0.3)
    img[liver & _ellipse(xx, yy, tcx, tcy, ax - 15, ay - 13)] = _LIVER
    # Spine: dark cortical ring with brighter marrow, posterior midline.
    sy = tcy + 0.72 * ay
    img[_ellipse(xx, yy, tcx, sy, 11, 10)] = _BONE
    img[_ellipse(xx, yy, tcx, sy, 7, 6)] = 800
    # Heart: RV crescent anterior-right of the LV, LV myocardium, LV blood pool.
    lcx = tcx + anat.heart_offset[0] + 0.5 * breath[0]
    lcy = tcy + anat.heart_offset[1] + 0.5 * breath[1]
    r_in = anat.cavity_radius(t, es)
    r_out = math.sqrt(r_in ** 2 + anat.myo_area * (1 - 0.35 * t) / math.pi)
    rv_scale = 1.0 if not es else 0.8
    img[_ellipse(xx, yy, lcx - 1.25 * r_out, lcy - 0.35 * r_out, 1.05 * r_out * rv_scale,
                 0.75 * r_out * rv_scale, 0.5)] = _RV_BLOOD
    dx, dy = xx - lcx, yy - lcy
    rho = np.hypot(dx, dy)
    theta = np.arctan2(dy, dx)
    # Epicardial fat: a bright rim that makes the dark myocardium stand out, as on SSFP cines.
    img[rho <= anat.radial_profile(theta, r_out + 2.5)] = 0.6 * _FAT
    outer = rho <= anat.radial_profile(theta, r_out)
    inner = rho <= anat.radial_profile(theta, r_in)
    img[outer] = _MYOCARDIUM
    img[inner] = _LV_BLOOD
    papillary = []
    if t < 0.8:  # papillary muscles fade towards the apex
        for ang in (math.radians(110) + rng.normal(0, 0.08), math.radians(35) + rng.normal(0, 0.08)):
            rr = float(anat.radial_profile(np.array(ang), r_in)) - 3.2
            px, py = lcx + rr * math.cos(ang), lcy + rr * math.sin(ang)
            pr = 2.2 + 1.2 * (1 - t) + (0.6 if es else 0.0)
            img[_ellipse(xx, yy, px, py, pr, pr * 0.8, ang)] = _PAPILLARY
            papillary.append((px, py, pr))
    import cv2
    img = cv2.GaussianBlur(img, (0, 0), 0.9)
    # Smooth multiplicative bias field (coil sensitivity), within about +-25 %.
    u, v = (xx - n / 2) / n, (yy - n / 2) / n
    b = anat.bias
    field = 1 + 0.25 * np.tanh(b[0] * u + b[1] * v + 0.8 * b[2] * u * v
                               + 0.8 * b[3] * u * u + 0.8 * b[4] * v * v) - 0.1 * (u * u + v * v)
    img *= field
    # Rician noise: magnitude of a complex signal with Gaussian noise on both channels.
    s = anat.noise_sigma
    img = np.hypot(img + rng.normal(0, s, img.shape), rng.normal(0, s, img.shape))
    img = np.clip(np.rint(img), 0, MAX_VALUE).astype(np.uint16)
    return img, (lcx, lcy), r_in, r_out, papillary


def _contour_points(anat, rng, center, radius, jitter=0.25):
    """An expert-like closed polyline: about one point per pixel of perimeter, sub-pixel."""
    count = max(24, int(2 * math.pi * radius))
    start = rng.uniform(0, 2 * math.pi)
    theta = start + np.linspace(0, 2 * math.pi, count, endpoint=False)
    r = anat.radial_profile(theta, radius) + rng.normal(0, jitter, count)
    x = center[0] + r * np.cos(theta)
    y = center[1] + r * np.sin(theta)
    return np.stack([x, y], axis=1)


def _write_contour(path, points):
    with open(path, "w") as fh:
        for x, y in points:
            fh.write("%.2f %.2f\n" % (x, y))


def _write_dicom(path, pixels, case, image_no, anat, slice_location, trigger_ms, seed):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid
    series = layout.SAX_SERIES[case]
    sop_uid = generate_uid(entropy_srcs=["sunnybrook-phantom", str(seed), case, str(image_no)])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = generate_uid(entropy_srcs=["study", str(seed), case])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=["series", str(seed), case, series])
    ds.FrameOfReferenceUID = generate_uid(entropy_srcs=["frame", str(seed), case])
    ds.Modality = "MR"
    ds.Manufacturer = "caffeseg phantom"
    ds.PatientName = case
    ds.PatientID = case
    ds.StudyDescription = "Cardiac cine (synthetic)"
    ds.SeriesDescription = "SAX cine FIESTA"
    ds.SeriesNumber = int(series)
    ds.InstanceNumber = image_no
    ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = "20090101"
    ds.StudyTime = "120000"
    ds.BodyPartExamined = "HEART"
    ds.PatientPosition = "HFS"
    ds.RepetitionTime = 3.4
    ds.EchoTime = 1.5
    ds.FlipAngle = 45
    ds.AcquisitionMatrix = [0, 256, 256, 0]
    ds.ScanningSequence = "GR"
    ds.SequenceVariant = "SS"
    ds.MRAcquisitionType = "2D"
    ds.MagneticFieldStrength = 1.5
    ds.SliceThickness = 8.0
    ds.SpacingBetweenSlices = 10.0
    ds.SliceLocation = round(float(slice_location), 4)
    ds.TriggerTime = round(float(trigger_ms), 2)
    ds.CardiacNumberOfImages = PHASES_PER_SLICE
    ds.PixelSpacing = [round(anat.spacing, 6), round(anat.spacing, 6)]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [round(-anat.spacing * IMAGE_SIZE / 2, 4),
                               round(-anat.spacing * IMAGE_SIZE / 2, 4),
                               round(float(slice_location), 4)]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.WindowCenter = 900
    ds.WindowWidth = 1800
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)


def _default_slices(case_index):
    """(slice count, drop the apical ES contour?) giving 260 inner contours over 15 cases."""
    return 9, case_index < 10


def generate(out_dir, cases=15, seed=0, slices=None, progress=None, slices_per_case=None):
    """Write a phantom release into ``out_dir``; return a summary dict.

    cases: a count (first N of the 15 real cases) or a list of case names.
    slices / slices_per_case: slice positions per case; None = the default layout (260 inner
    contours over 15 cases); when given, every slice gets ED and ES inner contours.
    progress: optional callable(done_images, total_images).
    """
    if slices is None:
        slices = slices_per_case
    if isinstance(cases, int):
        if not 1 <= cases <= len(layout.CASES):
            raise ValueError("cases must be 1..%d, got %d" % (len(layout.CASES), cases))
        case_names = list(layout.CASES[:cases])
    else:
        case_names = list(cases)
        for c in case_names:
            if c not in layout.SAX_SERIES:
                raise ValueError("unknown Sunnybrook case %r" % c)
    if slices is not None and int(slices) < 1:
        raise ValueError("slices must be at least 1")
    image_root = os.path.join(out_dir, "challenge_training")
    contour_root = os.path.join(out_dir, "TrainingDataContours")
    plan = []
    for case in case_names:
        idx = layout.CASES.index(case)
        n_slices, drop_apex_es = ((int(slices), False) if slices is not None
                                  else _default_slices(idx))
        plan.append((case, idx, n_slices, drop_apex_es))
    total = sum(2 * p[2] for p in plan)
    done = 0
    counts = {k: 0 for k in layout.CONTOUR_KINDS}
    truth = {}
    for case, idx, n_slices, drop_apex_es in plan:
        rng = np.random.default_rng([seed, idx])
        anat = _CaseAnatomy(rng)
        img_dir = os.path.join(image_root, case)
        ctr_dir = os.path.join(contour_root, layout.dir_from_case(case), layout.EXPERT_SUBDIR)
        os.makedirs(img_dir, exist_ok=True)
        os.makedirs(ctr_dir, exist_ok=True)
        case_truth = truth[case] = {"pixel_spacing": anat.spacing, "slice_spacing_mm": SLICE_SPACING_MM,
                                    "slices": []}
        for k in range(n_slices):
            t = k / max(1, n_slices - 1)
            for es in (False, True):
                phase = anat.es_phase if es else 0
                image_no = k * PHASES_PER_SLICE + phase + 1
                # Breathing: each acquisition (slice position) catches a different breath-hold.
                breath = (rng.normal(0, 1.5), rng.normal(0, 2.5))
                pixels, center, r_in, r_out, papillary = _render(anat, rng, t, es, breath)
                _write_dicom(os.path.join(img_dir, layout.image_name(case, image_no)), pixels,
                             case, image_no, anat, anat.base_location - SLICE_SPACING_MM * k,
                             phase * anat.rr_ms / PHASES_PER_SLICE, seed)
                if not (es and drop_apex_es and k == n_slices - 1):
                    _write_contour(os.path.join(ctr_dir, layout.contour_name(image_no, "icontour")),
                                   _contour_points(anat, rng, center, r_in))
                    counts["icontour"] += 1
                    px_mm2 = anat.spacing * anat.spacing
                    case_truth["slices"].append({
                        "image_no": image_no, "phase": "ES" if es else "ED", "slice_index": k,
                        "slice_location": anat.base_location - SLICE_SPACING_MM * k,
                        "endo_area_mm2": anat.profile_area(r_in) * px_mm2,
                        "epi_area_mm2": None if es else anat.profile_area(r_out) * px_mm2})
                if not es:
                    _write_contour(os.path.join(ctr_dir, layout.contour_name(image_no, "ocontour")),
                                   _contour_points(anat, rng, center, r_out, jitter=0.35))
                    counts["ocontour"] += 1
                    for kind, blob in zip(("p1contour", "p2contour"), papillary):
                        px, py, pr = blob
                        ang = np.linspace(0, 2 * math.pi, 16, endpoint=False)
                        pts = np.stack([px + pr * np.cos(ang), py + pr * np.sin(ang)], axis=1)
                        _write_contour(os.path.join(ctr_dir, layout.contour_name(image_no, kind)),
                                       pts + rng.normal(0, 0.1, pts.shape))
                        counts[kind] += 1
                done += 1
                if progress is not None:
                    progress(done, total)
    for case_truth in truth.values():
        case_truth.update(_truth_function(case_truth["slices"]))
    return {"image_folder": image_root, "contour_folder": contour_root, "cases": case_names,
            "images": total, "contours": counts, "truth": truth}


def _truth_function(slices):
    """The phantom's own LV function: its cavity is a stack of SLICE_SPACING_MM-thick discs
    with the closed-form contour areas, so EDV/ESV = Σ area × spacing over the contoured slices
    of each phase (the apical ES slice without contour counts zero, as the data shows nothing)."""
    def volume(phase, key):
        return sum(s[key] for s in slices if s["phase"] == phase) * SLICE_SPACING_MM / 1000.0
    edv, esv = volume("ED", "endo_area_mm2"), volume("ES", "endo_area_mm2")
    myo_ml = volume("ED", "epi_area_mm2") - edv
    return {"edv_ml": edv, "esv_ml": esv, "sv_ml": edv - esv, "ef_percent": 100.0 * (edv - esv) / edv,
            "myocardial_mass_g": 1.05 * myo_ml}


def window_png(dicom_path, png_path, center=900, width=1800):
    """Write a windowed 8-bit PNG of a phantom (or real) slice, for eyeballing."""
    import cv2
    from caffeseg.plugin.sunnybrook.dicom import read_slice
    px = read_slice(dicom_path).pixels.astype(np.float64)
    lo = center - width / 2
    img = np.clip((px - lo) / width * 255, 0, 255).astype(np.uint8)
    cv2.imwrite(png_path, img)
