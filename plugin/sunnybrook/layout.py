"""Names and paths of the Sunnybrook LV Segmentation Challenge release.

Images:   <image folder>/<case>/IM-<series>-<NNNN>.dcm           e.g. SC-HF-I-1/IM-0004-0048.dcm
Contours: <contour folder>/.../<CASEDIR>/contours-manual/IRCCI-expert/
              IM-0001-<NNNN>-<kind>contour-manual.txt             kind: i, o, p1, p2
where CASEDIR spells the case number with two digits (SC-HF-I-01) and the image case does not
(SC-HF-I-1). The contour files always say series 0001; the real series is the case's
short-axis (SAX) series below.
"""

import os
import re

# Short-axis series of each of the 15 challenge-training cases.
SAX_SERIES = {
    "SC-HF-I-1": "0004", "SC-HF-I-2": "0106", "SC-HF-I-4": "0116", "SC-HF-I-40": "0134",
    "SC-HF-NI-3": "0379", "SC-HF-NI-4": "0501", "SC-HF-NI-34": "0446", "SC-HF-NI-36": "0474",
    "SC-HYP-1": "0550", "SC-HYP-3": "0650", "SC-HYP-38": "0734", "SC-HYP-40": "0755",
    "SC-N-2": "0898", "SC-N-3": "0915", "SC-N-40": "0944",
}
CASES = tuple(SAX_SERIES)

CONTOUR_KINDS = ("icontour", "ocontour", "p1contour", "p2contour")
# Cine phases per slice position: image number = slice × 20 + phase + 1 in the release.
PHASES_PER_SLICE = 20
EXPERT_SUBDIR = os.path.join("contours-manual", "IRCCI-expert")

_CASE_RE = re.compile(r"^(SC-(?:HF-I|HF-NI|HYP|N))-(\d+)$")
_CONTOUR_RE = re.compile(r"^IM-(\d{4})-(\d{4})-(icontour|ocontour|p1contour|p2contour)-manual\.txt$")


def case_from_dir(dirname):
    """'SC-HF-I-01' -> 'SC-HF-I-1'; None when the name is not a Sunnybrook case folder."""
    m = _CASE_RE.match(dirname)
    if not m:
        return None
    return "%s-%d" % (m.group(1), int(m.group(2)))


def dir_from_case(case):
    """'SC-HF-I-1' -> 'SC-HF-I-01' (the spelling of the contour release)."""
    m = _CASE_RE.match(case)
    if not m:
        raise ValueError("%r is not a Sunnybrook case name" % case)
    return "%s-%02d" % (m.group(1), int(m.group(2)))


def parse_contour_name(filename):
    """'IM-0001-0048-icontour-manual.txt' -> (48, 'icontour'); None if it is not one."""
    m = _CONTOUR_RE.match(filename)
    if not m:
        return None
    return int(m.group(2)), m.group(3)


def contour_name(image_no, kind):
    return "IM-0001-%04d-%s-manual.txt" % (image_no, kind)


def image_name(case, image_no):
    return "IM-%s-%04d.dcm" % (SAX_SERIES[case], image_no)


def image_path(image_folder, case, image_no):
    return os.path.join(image_folder, case, image_name(case, image_no))


def find_contour_dirs(contour_folder):
    """Yield (case, CASEDIR path) for each case folder with an IRCCI-expert subfolder.

    The release nests the case folders at various depths, so the whole tree is walked.
    Case folders whose name is a Sunnybrook case unknown to the challenge set are yielded
    too (case is the normalised name); the caller reports them.
    """
    found = []
    own = case_from_dir(os.path.basename(os.path.normpath(contour_folder)))
    if own is not None and os.path.isdir(os.path.join(contour_folder, EXPERT_SUBDIR)):
        return [(own, contour_folder)]  # the user pointed at one case folder
    for root, dirs, _files in os.walk(contour_folder):
        dirs.sort()
        for d in list(dirs):
            case = case_from_dir(d)
            if case is not None and os.path.isdir(os.path.join(root, d, EXPERT_SUBDIR)):
                found.append((case, os.path.join(root, d)))
                dirs.remove(d)  # nothing of interest below a case folder's own tree
    return found
