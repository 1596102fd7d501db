#!/usr/bin/env python3
"""The Q/R benchmark data set: one deterministic scheme for every system (issue 13).

Every attribute is a pure function of (seed, study index, instance index), so that the first K
studies are the same data whoever generates them: this script writes them as DICOM files for
Orthanc and dcmqrscp, and `m3dnode bench qr-load` writes them straight into the node's index.
The scheme is specified in bench/README.md ("The data set"); change both or neither.

It also answers what each query must match at a given size, so that the timer can assert that
every system did the same work.

  qr_data.py describe --studies 10000            # counts: patients, SMI*, per month
  qr_data.py gen --studies 0:3 --per-study 100 OUT_DIR   # files of studies 0, 1, 2

Needs pydicom (>= 2.2).
"""
import argparse
import datetime
import os
import struct
import sys

MASK = (1 << 64) - 1

#: Root of every UID of the data set: a UUID-derived root (ITU-T X.667 / PS3.5 B.2) drawn once
#: for this benchmark, extended by `.seed.kind.study[.n]`. Longest UID (seed 999, 1,000,000
#: studies, 10,000 instances per study) is 63 characters.
UID_ROOT = "2.25.13974899806710873671008007745640960696"

# Tags of the hash: one per drawn attribute, so that the draws are independent.
T_STUDIES_PER_PATIENT = 1
T_SURNAME = 2
T_GIVEN = 3
T_SEX = 4
T_BIRTH = 5
T_DATE = 6
T_TIME = 7
T_MODALITY = 8
T_REFERRING = 9
# Query selection (not part of the stored data).
T_Q_PATIENT = 101
T_Q_MONTH = 102
T_Q_STUDY = 103

#: 64 surnames, drawn uniformly: SMITH and SMIRNOV (1/64 each) make `SMI*` match ~3.1 % of
#: patients; SMALL, SIMMONS and SCHMIDT are near misses for the wildcard.
SURNAMES = (
    "SMITH SMIRNOV JOHNSON WILLIAMS BROWN JONES GARCIA MILLER DAVIS RODRIGUEZ MARTINEZ "
    "HERNANDEZ LOPEZ GONZALEZ WILSON ANDERSON THOMAS TAYLOR MOORE JACKSON MARTIN LEE PEREZ "
    "THOMPSON WHITE HARRIS SANCHEZ CLARK RAMIREZ LEWIS ROBINSON WALKER YOUNG ALLEN KING "
    "WRIGHT SCOTT TORRES NGUYEN HILL FLORES GREEN ADAMS NELSON BAKER HALL RIVERA CAMPBELL "
    "MITCHELL CARTER ROBERTS MUELLER SCHMIDT SCHNEIDER FISCHER WEBER MEYER WAGNER ROSSI "
    "RUSSO DUBOIS IVANOV SMALL SIMMONS"
).split()
GIVEN_F = (
    "MARY ANNA ELENA SOPHIE LAURA JULIA MARIA EMMA OLGA CLAIRE SARAH LINDA KAREN NINA EVA ROSA"
).split()
GIVEN_M = (
    "JOHN PETER IVAN LUCAS DAVID MICHAEL THOMAS PAUL JAMES ANDREW MARCO KARL PIERRE JOSE "
    "ALEXEI OMAR"
).split()
REFERRING = "HOUSE^GREGORY GREY^MEREDITH ROSS^DOUG KILDARE^JAMES WHO^JOHN QUINN^MIKAELA " \
    "STRANGE^STEPHEN ZHIVAGO^YURI".split()
SERIES_DESC = {
    "MR": ("T1 MPRAGE", "T2 TSE", "FLAIR", "DWI"),
    "CT": ("HEAD 0.6", "HEAD 5.0", "BONE 0.6", "ANGIO"),
}
STUDY_DESC = {"MR": "MR HEAD", "CT": "CT HEAD"}
SOP_CLASS = {"MR": "1.2.840.10008.5.1.4.1.1.4", "CT": "1.2.840.10008.5.1.4.1.1.2"}
EXPLICIT_LE = "1.2.840.10008.1.2.1"

DATE0 = datetime.date(2020, 1, 1)
DATE_DAYS = (datetime.date(2026, 1, 1) - DATE0).days  # 2192: 2020-01-01 .. 2025-12-31
BIRTH0 = datetime.date(1930, 1, 1)
BIRTH_DAYS = (datetime.date(2000, 1, 1) - BIRTH0).days  # 25567: 1930-01-01 .. 1999-12-31
assert len(SURNAMES) == 64 and len(GIVEN_F) == 16 and len(GIVEN_M) == 16
assert len(REFERRING) == 8 and DATE_DAYS == 2192 and BIRTH_DAYS == 25567


def mix(x):
    """SplitMix64's step and finaliser (Steele, Lea, Flood 2014), on unsigned 64-bit words."""
    z = (x + 0x9E3779B97F4A7C15) & MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


class Scheme:
    """The data set of one seed; `per_study` instances per study in min(4, per_study) series."""

    def __init__(self, seed=1, per_study=100):
        if not 0 <= seed <= 999:
            raise ValueError("seed must be in 0..999 (it is part of every UID)")
        if per_study < 1:
            raise ValueError("per_study must be at least 1")
        self.seed = seed
        self.per_study = per_study
        self.series_per_study = min(4, per_study)
        self._tag_keys = {}
        self._studies = []  # cache: study index -> Study
        self._patients = 0

    def h(self, tag, i):
        """h(tag, i) = mix(mix(seed XOR (tag << 32)) XOR i): the only source of randomness."""
        key = self._tag_keys.get(tag)
        if key is None:
            key = self._tag_keys[tag] = mix(self.seed ^ (tag << 32))
        return mix(key ^ i)

    def uid(self, kind, *numbers):
        return ".".join([UID_ROOT, str(self.seed), str(kind)] + [str(n) for n in numbers])

    def patient(self, p):
        sex = "MF"[self.h(T_SEX, p) % 2]
        given = (GIVEN_F if sex == "F" else GIVEN_M)[self.h(T_GIVEN, p) % 16]
        return {
            "index": p,
            "PatientID": "P%06d" % (p + 1),
            "PatientName": SURNAMES[self.h(T_SURNAME, p) % 64] + "^" + given,
            "PatientSex": sex,
            "PatientBirthDate": (BIRTH0 + datetime.timedelta(self.h(T_BIRTH, p) % BIRTH_DAYS))
            .strftime("%Y%m%d"),
        }

    def _extend(self, k):
        """Makes studies 0..k-1 known: patient p owns the next 1 + h(1, p) % 4 studies."""
        while len(self._studies) < k:
            p = self._patients
            self._patients += 1
            pat = self.patient(p)
            for _ in range(1 + self.h(T_STUDIES_PER_PATIENT, p) % 4):
                self._studies.append(self._study(len(self._studies), pat))

    def _study(self, s, pat):
        modality = ("MR", "CT")[self.h(T_MODALITY, s) % 2]
        t = 7 * 3600 + self.h(T_TIME, s) % (12 * 3600)  # 07:00:00 .. 18:59:59
        return {
            "index": s,
            "patient": pat,
            "StudyInstanceUID": self.uid(1, s + 1),
            "StudyDate": (DATE0 + datetime.timedelta(self.h(T_DATE, s) % DATE_DAYS))
            .strftime("%Y%m%d"),
            "StudyTime": "%02d%02d%02d" % (t // 3600, t // 60 % 60, t % 60),
            "AccessionNumber": "A%08d" % (s + 1),
            "StudyID": str(s + 1),
            "StudyDescription": STUDY_DESC[modality],
            "ReferringPhysicianName": REFERRING[self.h(T_REFERRING, s) % 8],
            "Modality": modality,
        }

    def study(self, s):
        self._extend(s + 1)
        return self._studies[s]

    def studies(self, k):
        self._extend(k)
        return self._studies[:k]

    def series(self, st):
        """The series of a study: number k + 1 holds instances j with j % series_per_study == k."""
        n = self.series_per_study
        out = []
        for k in range(n):
            count = len(range(k, self.per_study, n))
            out.append({
                "SeriesInstanceUID": self.uid(2, st["index"] + 1, k + 1),
                "SeriesNumber": k + 1,
                "Modality": st["Modality"],
                "SeriesDescription": SERIES_DESC[st["Modality"]][k % 4],
                "BodyPartExamined": "HEAD",
                "instances": count,
            })
        return out

    def write_study(self, s, out_dir):
        """Writes study s as `per_study` Explicit VR Little Endian files; returns their paths.

        8x8 16-bit pixels: loading measures the index, not the pixel store. Encoded here
        rather than by pydicom, which took ~1 ms a file, as long as a fast SCP takes to store
        it."""
        st = self.study(s)
        pat = st["patient"]
        series = self.series(st)
        n = self.series_per_study
        sop_class = SOP_CLASS[st["Modality"]]
        os.makedirs(out_dir, exist_ok=True)
        head = [  # (0008,0018)..(0020,000E) and after are filled in per instance
            (0x0008, 0x0016, "UI", sop_class),
        ]
        study_part = [
            (0x0008, 0x0020, "DA", st["StudyDate"]),
            (0x0008, 0x0021, "DA", st["StudyDate"]),
            (0x0008, 0x0023, "DA", st["StudyDate"]),
            (0x0008, 0x0030, "TM", st["StudyTime"]),
            (0x0008, 0x0031, "TM", st["StudyTime"]),
            (0x0008, 0x0033, "TM", st["StudyTime"]),
            (0x0008, 0x0050, "SH", st["AccessionNumber"]),
            (0x0008, 0x0060, "CS", st["Modality"]),
            (0x0008, 0x0090, "PN", st["ReferringPhysicianName"]),
            (0x0008, 0x1030, "LO", st["StudyDescription"]),
        ]
        patient_part = [
            (0x0010, 0x0010, "PN", pat["PatientName"]),
            (0x0010, 0x0020, "LO", pat["PatientID"]),
            (0x0010, 0x0030, "DA", pat["PatientBirthDate"]),
            (0x0010, 0x0040, "CS", pat["PatientSex"]),
            (0x0018, 0x0015, "CS", "HEAD"),
            (0x0020, 0x000D, "UI", st["StudyInstanceUID"]),
        ]
        image_part = [
            (0x0020, 0x0052, "UI", self.uid(4, s + 1)),
            (0x0028, 0x0002, "US", 1),
            (0x0028, 0x0004, "CS", "MONOCHROME2"),
            (0x0028, 0x0010, "US", 8),
            (0x0028, 0x0011, "US", 8),
            (0x0028, 0x0100, "US", 16),
            (0x0028, 0x0101, "US", 12),
            (0x0028, 0x0102, "US", 11),
            (0x0028, 0x0103, "US", 0),
        ]
        fixed_head = b"".join(_element(*e) for e in head)
        fixed_study = b"".join(_element(*e) for e in study_part)
        fixed_patient = b"".join(_element(*e) for e in patient_part)
        fixed_image = b"".join(_element(*e) for e in image_part)
        paths = []
        for j in range(self.per_study):
            se = series[j % n]
            sop_uid = self.uid(3, s + 1, j + 1)
            meta = b"".join((
                _element(0x0002, 0x0001, "OB", b"\x00\x01"),
                _element(0x0002, 0x0002, "UI", sop_class),
                _element(0x0002, 0x0003, "UI", sop_uid),
                _element(0x0002, 0x0010, "UI", EXPLICIT_LE),
                _element(0x0002, 0x0012, "UI", IMPLEMENTATION_CLASS_UID),
                _element(0x0002, 0x0013, "SH", "M3DNODE-QRBENCH"),
            ))
            data = b"".join((
                b"\0" * 128, b"DICM", _element(0x0002, 0x0000, "UL", len(meta)), meta,
                fixed_head, _element(0x0008, 0x0018, "UI", sop_uid), fixed_study,
                _element(0x0008, 0x103E, "LO", se["SeriesDescription"]), fixed_patient,
                _element(0x0020, 0x000E, "UI", se["SeriesInstanceUID"]),
                _element(0x0020, 0x0010, "SH", st["StudyID"]),
                _element(0x0020, 0x0011, "IS", str(se["SeriesNumber"])),
                _element(0x0020, 0x0013, "IS", str(j // n + 1)),
                fixed_image,
                _element(0x7FE0, 0x0010, "OW", bytes([j % 256, 0]) * 64),
            ))
            path = os.path.join(out_dir, "S%07d_I%05d.dcm" % (s + 1, j + 1))
            with open(path, "wb") as f:
                f.write(data)
            paths.append(path)
        return paths


#: (0002,0012) of the generated files.
IMPLEMENTATION_CLASS_UID = UID_ROOT + ".0.1"
_LONG_VRS = {"OB", "OW", "UN", "SQ", "UT", "UC", "UR"}


def _element(group, elem, vr, value):
    """One Explicit VR Little Endian element (PS3.5 7.1.2); text padded to even length."""
    if vr == "US":
        raw = struct.pack("<H", value)
    elif vr == "UL":
        raw = struct.pack("<I", value)
    elif isinstance(value, bytes):
        raw = value
    else:
        raw = value.encode("ascii")
    if len(raw) % 2:
        raw += b"\0" if vr in ("UI", "OB") else b" "
    if vr in _LONG_VRS:
        return struct.pack("<HH2sHI", group, elem, vr.encode(), 0, len(raw)) + raw
    return struct.pack("<HH2sH", group, elem, vr.encode(), len(raw)) + raw


# ---- queries and what they must match ------------------------------------------------------

KINDS = ("patient_id", "name_smi", "date_month", "series_of_study")
KIND_TITLES = {
    "patient_id": "STUDY by Patient ID",
    "name_smi": "STUDY by Patient's Name SMI*",
    "date_month": "STUDY by Study Date, one month",
    "series_of_study": "SERIES by Study Instance UID",
}

#: Return keys asked for besides the matching key, as a navigation system's study browser does.
STUDY_RETURN_KEYS = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
    "AccessionNumber", "StudyID", "StudyInstanceUID", "StudyDescription",
    "ReferringPhysicianName",
)
STUDY_DERIVED_KEYS = ("ModalitiesInStudy", "NumberOfStudyRelatedSeries",
                      "NumberOfStudyRelatedInstances")
SERIES_RETURN_KEYS = (
    "StudyInstanceUID", "SeriesInstanceUID", "Modality", "SeriesNumber", "SeriesDescription",
    "BodyPartExamined", "NumberOfSeriesRelatedInstances",
)


def month_range(m):
    """Month m (0 = 2020-01) as a DA range `YYYYMM01-YYYYMMDD`."""
    y, mo = 2020 + m // 12, m % 12 + 1
    first = datetime.date(y, mo, 1)
    nxt = datetime.date(y + (mo == 12), mo % 12 + 1, 1)
    last = nxt - datetime.timedelta(1)
    return first.strftime("%Y%m%d") + "-" + last.strftime("%Y%m%d")


def make_queries(scheme, key_studies, count, derived=True):
    """`count` queries of each kind, keys drawn (seeded) from the first `key_studies` studies.

    Returns {kind: [{"level", "keys": {keyword: value}, "match": (keyword, value)}]}; the same
    list goes to every system, whatever its size, so that each does the same lookups."""
    studies = scheme.studies(key_studies)
    study_keys = STUDY_RETURN_KEYS + (STUDY_DERIVED_KEYS if derived else ())
    out = {k: [] for k in KINDS}
    for q in range(count):
        pid = studies[scheme.h(T_Q_PATIENT, q) % key_studies]["patient"]["PatientID"]
        month = month_range(scheme.h(T_Q_MONTH, q) % 72)
        suid = studies[scheme.h(T_Q_STUDY, q) % key_studies]["StudyInstanceUID"]
        for kind, level, keyword, value, keys in (
            ("patient_id", "STUDY", "PatientID", pid, study_keys),
            ("name_smi", "STUDY", "PatientName", "SMI*", study_keys),
            ("date_month", "STUDY", "StudyDate", month, study_keys),
            ("series_of_study", "SERIES", "StudyInstanceUID", suid, SERIES_RETURN_KEYS),
        ):
            ident = {k: "" for k in keys}
            ident[keyword] = value
            out[kind].append({"level": level, "keys": ident, "match": [keyword, value]})
    return out


def expected(scheme, size, query):
    """The UIDs a query must match on a system holding studies 0..size-1 (whole studies)."""
    keyword, value = query["match"]
    studies = scheme.studies(size)
    if query["level"] == "SERIES":
        return sorted(se["SeriesInstanceUID"] for st in studies
                      if st["StudyInstanceUID"] == value for se in scheme.series(st))
    if keyword == "PatientID":
        hit = [st for st in studies if st["patient"]["PatientID"] == value]
    elif keyword == "PatientName":
        assert value.endswith("*") and "*" not in value[:-1] and "?" not in value
        hit = [st for st in studies if st["patient"]["PatientName"].startswith(value[:-1])]
    elif keyword == "StudyDate":
        lo, hi = value.split("-")
        hit = [st for st in studies if lo <= st["StudyDate"] <= hi]
    else:
        raise ValueError(keyword)
    return sorted(st["StudyInstanceUID"] for st in hit)


def describe(scheme, k):
    studies = scheme.studies(k)
    pats = {st["patient"]["PatientID"] for st in studies}
    smi = sum(st["patient"]["PatientName"].startswith("SMI") for st in studies)
    per_month = {}
    for st in studies:
        per_month[st["StudyDate"][:6]] = per_month.get(st["StudyDate"][:6], 0) + 1
    months = sorted(per_month.values())
    print(f"studies {k}, instances {k * scheme.per_study}, series per study "
          f"{scheme.series_per_study}, patients {len(pats)} "
          f"({k / max(1, len(pats)):.2f} studies each)")
    print(f"SMI* studies {smi} ({100 * smi / max(1, k):.2f} %); studies per month: "
          f"min {months[0]}, median {months[len(months) // 2]}, max {months[-1]} "
          f"over {len(months)} months")
    first = studies[0]
    print(f"study 0: {first['patient']['PatientID']} {first['patient']['PatientName']} "
          f"{first['StudyDate']} {first['StudyTime']} {first['Modality']} "
          f"{first['StudyInstanceUID']}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--per-study", type=int, default=100)
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("describe")
    d.add_argument("--studies", type=int, default=10000)
    g = sub.add_parser("gen")
    g.add_argument("--studies", required=True, help="A:B, studies A..B-1 (0-based)")
    g.add_argument("out")
    a = ap.parse_args()
    scheme = Scheme(a.seed, a.per_study)
    if a.cmd == "describe":
        describe(scheme, a.studies)
    else:
        lo, hi = (int(x) for x in a.studies.split(":"))
        for s in range(lo, hi):
            scheme.write_study(s, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
