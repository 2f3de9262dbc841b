"""Synthetic Moroccan patients and HL7 v2 messages for the demo, the tests and the benchmark.

Everything here is invented: the name lists are hand-made from common Moroccan family and given
names, identifiers are random digits in the shape of the real ones, and no value comes from a real
patient (provenance in ``docs/synthetic-data.md``). Output is deterministic: the same seed gives
the same patients and, with the same arguments, byte-identical messages.

Usage::

    people = patients(100, seed=7)
    er7 = adt(people[0], "A01", control_id="MSG000001")
    for patient, event, er7 in stream(1_000, seed=7, mix={"ADT^A01": 0.3, "ORU^R01": 0.7}):
        ...
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Final

from broker.parsing.hl7v2 import charset_code, escape

__all__ = [
    "ADT_EVENTS",
    "ANALYTES",
    "CITIES",
    "DEFAULT_MIX",
    "FAMILY_NAMES",
    "FEMALE_GIVEN_NAMES",
    "MALE_GIVEN_NAMES",
    "MOROCCO_TZ",
    "PANELS",
    "Analyte",
    "City",
    "Patient",
    "adt",
    "oru_r01",
    "patients",
    "stream",
]

MOROCCO_TZ: Final = timezone(timedelta(hours=1))
"""Morocco keeps UTC+01:00 all year since 2018 (apart from Ramadan, ignored here)."""

_REFERENCE_DAY: Final = date(2025, 1, 1)
"""Ages and default message times are computed from this day, never from the clock."""

# (Latin script as the civil registry writes it, Arabic script); hand-made, docs/synthetic-data.md.
FAMILY_NAMES: Final[tuple[tuple[str, str], ...]] = (
    ("EL AMRANI", "العمراني"),
    ("BENNANI", "بناني"),
    ("ALAOUI", "العلوي"),
    ("TAZI", "التازي"),
    ("BERRADA", "برادة"),
    ("EL IDRISSI", "الإدريسي"),
    ("CHERKAOUI", "الشرقاوي"),
    ("ZIANI", "الزياني"),
    ("OUAZZANI", "الوزاني"),
    ("EL FASSI", "الفاسي"),
    ("BENJELLOUN", "بنجلون"),
    ("SQALLI", "السقلي"),
    ("LAHLOU", "لحلو"),
    ("CHRAIBI", "الشرايبي"),
    ("EL MANSOURI", "المنصوري"),
    ("NACIRI", "الناصري"),
    ("KETTANI", "الكتاني"),
    ("SLAOUI", "السلاوي"),
    ("BENKIRANE", "بنكيران"),
    ("FILALI", "الفيلالي"),
    ("SEBTI", "السبتي"),
    ("HAJJI", "الحجي"),
    ("AIT TALEB", "آيت الطالب"),
    ("BOUZIDI", "البوزيدي"),
)

FEMALE_GIVEN_NAMES: Final[tuple[tuple[str, str], ...]] = (
    ("Fatima", "فاطمة"),
    ("Khadija", "خديجة"),
    ("Amina", "أمينة"),
    ("Salma", "سلمى"),
    ("Zineb", "زينب"),
    ("Meryem", "مريم"),
    ("Houda", "هدى"),
    ("Nadia", "نادية"),
    ("Imane", "إيمان"),
    ("Sanae", "سناء"),
    ("Hind", "هند"),
    ("Latifa", "لطيفة"),
    ("Asmae", "أسماء"),
    ("Ghita", "غيثة"),
    ("Kawtar", "كوثر"),
    ("Hajar", "هاجر"),
)

MALE_GIVEN_NAMES: Final[tuple[tuple[str, str], ...]] = (
    ("Mohammed", "محمد"),
    ("Youssef", "يوسف"),
    ("Omar", "عمر"),
    ("Hamza", "حمزة"),
    ("Mehdi", "مهدي"),
    ("Ahmed", "أحمد"),
    ("Rachid", "رشيد"),
    ("Karim", "كريم"),
    ("Said", "سعيد"),
    ("Hassan", "حسن"),
    ("Abdellah", "عبد الله"),
    ("Ayoub", "أيوب"),
    ("Anas", "أنس"),
    ("Othmane", "عثمان"),
    ("Ilyas", "إلياس"),
    ("Driss", "إدريس"),
)


@dataclass(frozen=True, slots=True)
class City:
    """A Moroccan city with its main postal code, region and plausible CIN letter prefixes."""

    name: str
    postal_code: str
    region: str
    cin_prefixes: tuple[str, ...]


# CIN prefixes are letters that look like those printed on cards from these cities; the mapping is
# for flavour only and makes no claim about how identity cards are really issued.
CITIES: Final[tuple[City, ...]] = (
    City("Rabat", "10000", "Rabat-Salé-Kénitra", ("A", "AB", "AE")),
    City("Casablanca", "20000", "Casablanca-Settat", ("B", "BE", "BH", "BK")),
    City("Fès", "30000", "Fès-Meknès", ("C", "CD")),
    City("Marrakech", "40000", "Marrakech-Safi", ("E", "EE")),
    City("Tanger", "90000", "Tanger-Tétouan-Al Hoceïma", ("K", "KB")),
    City("Agadir", "80000", "Souss-Massa", ("J", "JB")),
    City("Oujda", "60000", "L'Oriental", ("F", "FA")),
)

_STREETS: Final[tuple[str, ...]] = (
    "Avenue Mohammed V",
    "Boulevard Zerktouni",
    "Rue Oued Sebou",
    "Avenue Hassan II",
    "Rue Ibn Batouta",
    "Boulevard Abdelmoumen",
    "Hay Riad, Secteur 9",
    "Angle Bd Anfa & Rue Ibn Sina",  # a real-looking "&": exercises ER7 escaping (\T\)
    "Derb Sidi Bouloukat",
    "Résidence Al Manar, Imm 4 Appt 12",
    "Quartier Agdal, Rue Jbel Tazekka",
    "Route de Sefrou",
)

_WARDS: Final[tuple[str, ...]] = ("MED-INT", "CARDIO", "PNEUMO", "PEDIA", "CHIR-GEN", "GYNECO")
_CIN_AUTHORITY: Final = "MA"
"""PID-3.4 of the CIN: the issuing authority is the Kingdom of Morocco (ISO 3166 alpha-2)."""
_CIN_TYPE: Final = "NNMAR"
"""PID-3.5 of the CIN: HL7 table 0203 national number, ``NN`` + ISO 3166 alpha-3, as IHE uses."""

_INSURERS: Final[dict[str, str]] = {
    "CNSS": "Caisse Nationale de Sécurité Sociale",
    "CNOPS": "Caisse Nationale des Organismes de Prévoyance Sociale",
}


@dataclass(frozen=True, slots=True)
class Patient:
    """One synthetic patient as a Moroccan hospital information system would know them.

    Attributes:
        ipp: the hospital's patient number (identifiant permanent du patient), ``IPP`` + 7 digits.
        facility: the hospital that assigned ``ipp`` (PID-3.4 of the IPP).
        cin: the national identity card number (1-2 letters + 5-6 digits); ``None`` for a minor.
        family, given: the name in Latin script, as the civil registry spells it.
        family_ar, given_ar: the same name in Arabic script.
        sex: ``F`` or ``M`` (HL7 table 0001).
        birth_date: the date of birth.
        street, city, postal_code, region: the home address.
        phone: a mobile number in E.164 form (``+2126`` + 8 digits).
        insurer: the AMO body, ``CNSS`` (private sector) or ``CNOPS`` (public sector).
        insurance_number: the member number at the insurer.
    """

    ipp: str
    facility: str
    cin: str | None
    family: str
    given: str
    family_ar: str
    given_ar: str
    sex: str
    birth_date: date
    street: str
    city: str
    postal_code: str
    region: str
    phone: str
    insurer: str
    insurance_number: str


def patients(
    n: int, seed: int, *, facility: str = "CHU-RABAT", minors: float = 0.1
) -> list[Patient]:
    """Generate ``n`` distinct synthetic patients, the same ones for the same seed.

    Args:
        n: how many patients.
        seed: the seed of the generator.
        facility: the hospital that assigns the IPPs.
        minors: the share of patients under 18, who have no CIN.

    Returns:
        Patients with unique IPPs and unique CINs.
    """
    rng = random.Random(seed)
    ipps: set[str] = set()
    cins: set[str] = set()
    out: list[Patient] = []
    while len(out) < n:
        ipp = f"IPP{rng.randrange(10**7):07d}"
        if ipp in ipps:
            continue
        sex = rng.choice("FM")
        given, given_ar = rng.choice(FEMALE_GIVEN_NAMES if sex == "F" else MALE_GIVEN_NAMES)
        family, family_ar = rng.choice(FAMILY_NAMES)
        minor = rng.random() < minors
        age_days = rng.randrange(0, 18 * 365) if minor else rng.randrange(18 * 365 + 5, 92 * 365)
        city = rng.choice(CITIES)
        cin: str | None = None
        if not minor:
            cin = f"{rng.choice(city.cin_prefixes)}{rng.randrange(10**4, 10**6)}"
            if cin in cins:
                continue
            cins.add(cin)
        ipps.add(ipp)
        insurer = rng.choice(("CNSS", "CNSS", "CNOPS"))
        number = (
            f"{rng.randrange(10**8, 10**9)}" if insurer == "CNSS" else f"{rng.randrange(10**9):09d}"
        )
        out.append(
            Patient(
                ipp=ipp,
                facility=facility,
                cin=cin,
                family=family,
                given=given,
                family_ar=family_ar,
                given_ar=given_ar,
                sex=sex,
                birth_date=_REFERENCE_DAY - timedelta(days=age_days),
                street=f"{rng.randrange(1, 250)} {rng.choice(_STREETS)}",
                city=city.name,
                postal_code=city.postal_code,
                region=city.region,
                phone=f"+2126{rng.randrange(10**8):08d}",
                insurer=insurer,
                insurance_number=number,
            )
        )
    return out


# --- ER7 writing -------------------------------------------------------------------------------


def _c(*components: str) -> str:
    """One field repetition: components escaped, joined by ``^``, trailing empties dropped."""
    return "^".join(escape(c) for c in components).rstrip("^")


def _segment(name: str, fields: Mapping[int, str], size: int | None = None) -> str:
    """A segment from ``{field number: ER7 text}``; unset fields are empty."""
    last = max(fields) if fields else 0
    values = [fields.get(i, "") for i in range(1, max(last, size or 0) + 1)]
    return "|".join([name, *values]).rstrip("|")


def _ts(moment: datetime) -> str:
    """HL7 DTM/TS to the second, with the UTC offset when known (v2.5.1 §2.A.22)."""
    text = moment.strftime("%Y%m%d%H%M%S")
    return text + moment.strftime("%z") if moment.tzinfo else text


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".") if part.isdigit())


def _msh(
    *,
    message_type: str,
    trigger: str,
    structure: str,
    control_id: str,
    version: str,
    sending_application: str,
    sending_facility: str,
    receiving_application: str,
    receiving_facility: str,
    when: datetime,
) -> str:
    v = _version_tuple(version)
    # MSH-9.3 (message structure) exists from v2.3.1; v2.3 has only code^trigger.
    msh9 = _c(message_type, trigger, structure) if v >= (2, 3, 1) else _c(message_type, trigger)
    # MSH-18, HL7 table 0211: "UNICODE UTF-8" from v2.5, "UNICODE" in v2.3 and v2.4.
    charset = charset_code("utf-8", version) or ""
    fields = {
        3: _c(sending_application),
        4: _c(sending_facility),
        5: _c(receiving_application),
        6: _c(receiving_facility),
        7: _ts(when),
        9: msh9,
        10: escape(control_id),
        11: "P",
        12: _c(version),
        17: "MAR",  # MSH-17 country code, ISO 3166 alpha-3
        18: charset,
    }
    values = [fields.get(i, "") for i in range(3, 19)]
    return "MSH|^~\\&|" + "|".join(values)


def _pid(patient: Patient, version: str) -> str:
    ids = [_c(patient.ipp, "", "", patient.facility, "PI")]
    if patient.cin:
        ids.append(_c(patient.cin, "", "", _CIN_AUTHORITY, _CIN_TYPE))
    # PID-5: the first repetition is the Latin-script legal name, the second the same name in
    # Arabic script; XPN-7 name type L (legal) on both (HL7 table 0200). PID-5 repeats only from
    # v2.3.1, so a v2.3 message carries the Latin-script name alone.
    names = [_c(patient.family, patient.given, "", "", "", "", "L")]
    if _version_tuple(version) >= (2, 3, 1):
        names.append(_c(patient.family_ar, patient.given_ar, "", "", "", "", "L"))
    fields = {
        1: "1",
        3: "~".join(ids),
        5: "~".join(names),
        7: patient.birth_date.strftime("%Y%m%d"),
        8: patient.sex,
        11: _c(patient.street, "", patient.city, patient.region, patient.postal_code, "MAR", "H"),
        13: _phone(patient.phone, version),
    }
    return _segment("PID", fields)


def _phone(e164: str, version: str) -> str:
    """PID-13 (XTN) of a Moroccan mobile number ``+212`` + 9 digits, valid in v2.3 to v2.5.1.

    XTN-1 is the HL7 TN format (``999-9999``) before v2.5 and the E.164 text from v2.5, where it
    is deprecated in favour of XTN-12; XTN-5/6/7 (country, area, local number) are always given.
    """
    national = e164.removeprefix("+212")
    area, local = national[:3], national[3:]
    if _version_tuple(version) >= (2, 5):
        return _c(e164, "PRN", "CP", "", "212", area, local, "", "", "", "", e164)
    return _c(f"0{area}-{local}", "PRN", "CP", "", "212", area, local)


@dataclass(frozen=True, slots=True)
class _Visit:
    patient_class: str
    ward: str
    room: str
    bed: str
    doctor_id: str
    doctor_family: str
    doctor_given: str
    number: str
    admitted: datetime


def _visit(rng: random.Random, patient_class: str, when: datetime) -> _Visit:
    doctor_family = rng.choice(FAMILY_NAMES)[0]
    doctor_given = rng.choice(FEMALE_GIVEN_NAMES + MALE_GIVEN_NAMES)[0]
    return _Visit(
        patient_class=patient_class,
        ward="URG" if patient_class == "E" else rng.choice(_WARDS),
        room=f"{rng.randrange(1, 6)}{rng.randrange(1, 40):02d}",
        bed=rng.choice("ABCD"),
        doctor_id=f"MED{rng.randrange(10**5):05d}",
        doctor_family=doctor_family,
        doctor_given=doctor_given,
        number=f"V{when:%Y}{rng.randrange(10**7):07d}",
        admitted=when - timedelta(minutes=rng.randrange(0, 180)),
    )


def _pv1(visit: _Visit, *, discharged: datetime | None = None) -> str:
    fields = {
        1: "1",
        2: visit.patient_class,  # PV1-2, HL7 table 0004: I inpatient, O outpatient, E emergency
        3: _c(visit.ward, visit.room, visit.bed),
        7: _c(visit.doctor_id, visit.doctor_family, visit.doctor_given),
        19: _c(visit.number),
        44: _ts(visit.admitted),
    }
    if discharged is not None:
        fields[45] = _ts(discharged)
    return _segment("PV1", fields)


def _in1(patient: Patient) -> str:
    fields = {
        1: "1",
        2: _c(f"AMO-{patient.insurer}", f"AMO {patient.insurer}"),  # IN1-2 insurance plan id
        3: _c(patient.insurer),  # IN1-3 insurance company id
        4: _c(_INSURERS[patient.insurer]),  # IN1-4 insurance company name
        16: _c(patient.family, patient.given),  # IN1-16 name of insured
        17: "SEL",  # IN1-17 insured's relationship to patient, HL7 table 0063: self
        36: _c(patient.insurance_number),  # IN1-36 policy number: the AMO member number
    }
    return _segment("IN1", fields)


def _default_when(rng: random.Random) -> datetime:
    start = datetime(_REFERENCE_DAY.year, 1, 6, 7, 0, tzinfo=MOROCCO_TZ)
    return start + timedelta(seconds=rng.randrange(0, 300 * 86_400))


def _rng_for(patient: Patient, control_id: str, kind: str) -> random.Random:
    # A string seed is hashed with SHA-512 by random.Random: stable across processes and runs.
    return random.Random(f"{kind}|{patient.ipp}|{patient.facility}|{control_id}")


ADT_EVENTS: Final[dict[str, tuple[str, str]]] = {
    "A01": ("ADT_A01", "I"),  # admit/visit notification
    "A03": ("ADT_A03", "I"),  # discharge/end visit
    "A04": ("ADT_A01", "O"),  # register a patient (outpatient)
    "A08": ("ADT_A01", "I"),  # update patient information
}
"""Supported ADT trigger events → (message structure, usual patient class); v2.5.1 ch. 3."""


def adt(
    patient: Patient,
    event: str = "A01",
    *,
    control_id: str,
    version: str = "2.5.1",
    sending_application: str = "HIS",
    sending_facility: str = "CHU-RABAT",
    receiving_application: str = "PASSERELLE",
    receiving_facility: str = "MA-DMP",
    when: datetime | None = None,
) -> str:
    """Write an ADT message (MSH, EVN, PID, PV1, IN1) as ER7 text, segments separated by CR.

    Args:
        patient: the patient.
        event: the trigger event, one of ``ADT_EVENTS`` (``A01``, ``A03``, ``A04``, ``A08``).
        control_id: MSH-10.
        version: MSH-12, ``2.3`` to ``2.5.1``; decides MSH-9.3 and the MSH-18 code.
        sending_application, sending_facility: MSH-3 and MSH-4.
        receiving_application, receiving_facility: MSH-5 and MSH-6.
        when: MSH-7 and EVN-2; ``None`` derives a reproducible 2025 time from the patient and
            ``control_id`` (pass ``datetime.now(MOROCCO_TZ)`` for a live demo).

    Returns:
        The message text, without MLLP framing and without a trailing CR.

    Raises:
        ValueError: for an unsupported event.
    """
    if event not in ADT_EVENTS:
        msg = f"unsupported ADT event {event!r}; expected one of {', '.join(ADT_EVENTS)}"
        raise ValueError(msg)
    rng = _rng_for(patient, control_id, "adt")
    moment = when if when is not None else _default_when(rng)
    structure, patient_class = ADT_EVENTS[event]
    if event == "A01" and rng.random() < 0.25:
        patient_class = "E"
    visit = _visit(rng, patient_class, moment)
    discharged = moment if event == "A03" else None
    segments = [
        _msh(
            message_type="ADT",
            trigger=event,
            structure=structure,
            control_id=control_id,
            version=version,
            sending_application=sending_application,
            sending_facility=sending_facility,
            receiving_application=receiving_application,
            receiving_facility=receiving_facility,
            when=moment,
        ),
        _segment("EVN", {1: event, 2: _ts(moment)}),
        _pid(patient, version),
        _pv1(visit, discharged=discharged),
        _in1(patient),
    ]
    return "\r".join(segments)


# --- Laboratory results ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Analyte:
    """A numeric laboratory test: LOINC code and name, UCUM unit and adult reference interval.

    ``low`` or ``high`` is ``None`` for one-sided intervals (``<200``).
    """

    loinc: str
    name: str
    unit: str
    low: float | None
    high: float | None
    decimals: int


PANELS: Final[dict[str, tuple[str, tuple[Analyte, ...]]]] = {
    "58410-2": (
        "CBC panel - Blood by Automated count",
        (
            Analyte("718-7", "Hemoglobin [Mass/volume] in Blood", "g/dL", 12.0, 16.0, 1),
            Analyte(
                "4544-3",
                "Hematocrit [Volume Fraction] of Blood by Automated count",
                "%",
                36.0,
                48.0,
                1,
            ),
            Analyte(
                "6690-2",
                "Leukocytes [#/volume] in Blood by Automated count",
                "10*3/uL",
                4.0,
                10.0,
                1,
            ),
            Analyte(
                "789-8",
                "Erythrocytes [#/volume] in Blood by Automated count",
                "10*6/uL",
                4.2,
                5.8,
                2,
            ),
            Analyte(
                "777-3", "Platelets [#/volume] in Blood by Automated count", "10*3/uL", 150, 400, 0
            ),
            Analyte("787-2", "MCV [Entitic volume] by Automated count", "fL", 80, 100, 1),
            Analyte("785-6", "MCH [Entitic mass] by Automated count", "pg", 27, 33, 1),
            Analyte("786-4", "MCHC [Mass/volume] by Automated count", "g/dL", 32, 36, 1),
        ),
    ),
    "51990-0": (
        "Basic metabolic panel - Blood",
        (
            Analyte("2345-7", "Glucose [Mass/volume] in Serum or Plasma", "mg/dL", 70, 99, 0),
            Analyte("2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "mg/dL", 0.6, 1.2, 2),
            Analyte("3094-0", "Urea nitrogen [Mass/volume] in Serum or Plasma", "mg/dL", 7, 20, 0),
            Analyte("2951-2", "Sodium [Moles/volume] in Serum or Plasma", "mmol/L", 135, 145, 0),
            Analyte("2823-3", "Potassium [Moles/volume] in Serum or Plasma", "mmol/L", 3.5, 5.1, 1),
            Analyte("2075-0", "Chloride [Moles/volume] in Serum or Plasma", "mmol/L", 98, 107, 0),
            Analyte(
                "2028-9",
                "Carbon dioxide, total [Moles/volume] in Serum or Plasma",
                "mmol/L",
                22,
                29,
                0,
            ),
            Analyte("17861-6", "Calcium [Mass/volume] in Serum or Plasma", "mg/dL", 8.6, 10.3, 1),
        ),
    ),
    "24325-3": (
        "Hepatic function 2000 panel - Serum or Plasma",
        (
            Analyte(
                "1742-6",
                "Alanine aminotransferase [Enzymatic activity/volume] in Serum or Plasma",
                "U/L",
                7,
                56,
                0,
            ),
            Analyte(
                "1920-8",
                "Aspartate aminotransferase [Enzymatic activity/volume] in Serum or Plasma",
                "U/L",
                10,
                40,
                0,
            ),
            Analyte(
                "6768-6",
                "Alkaline phosphatase [Enzymatic activity/volume] in Serum or Plasma",
                "U/L",
                44,
                147,
                0,
            ),
            Analyte(
                "1975-2", "Bilirubin.total [Mass/volume] in Serum or Plasma", "mg/dL", 0.1, 1.2, 1
            ),
            Analyte("1751-7", "Albumin [Mass/volume] in Serum or Plasma", "g/dL", 3.5, 5.0, 1),
            Analyte("2885-2", "Protein [Mass/volume] in Serum or Plasma", "g/dL", 6.0, 8.3, 1),
        ),
    ),
    "57698-3": (
        "Lipid panel with direct LDL - Serum or Plasma",
        (
            Analyte(
                "2093-3", "Cholesterol [Mass/volume] in Serum or Plasma", "mg/dL", None, 200, 0
            ),
            Analyte(
                "2571-8", "Triglyceride [Mass/volume] in Serum or Plasma", "mg/dL", None, 150, 0
            ),
            Analyte(
                "2085-9",
                "Cholesterol in HDL [Mass/volume] in Serum or Plasma",
                "mg/dL",
                40,
                None,
                0,
            ),
            Analyte(
                "18262-6",
                "Cholesterol in LDL [Mass/volume] in Serum or Plasma by Direct assay",
                "mg/dL",
                None,
                100,
                0,
            ),
        ),
    ),
}
"""LOINC panel code → (panel name, its numeric members in report order)."""

ANALYTES: Final[tuple[tuple[str, Analyte], ...]] = tuple(
    (panel, analyte) for panel, (_, members) in PANELS.items() for analyte in members
)
"""Every (panel code, analyte) in report order; ``oru_r01`` takes the first ``n_obx``."""


def _reference_range(a: Analyte) -> str:
    fmt = f"{{:.{a.decimals}f}}"
    if a.low is None:
        return f"<{fmt.format(a.high)}"
    if a.high is None:
        return f">{fmt.format(a.low)}"
    return f"{fmt.format(a.low)}-{fmt.format(a.high)}"


def _result(rng: random.Random, a: Analyte) -> tuple[str, str]:
    """A value (as text) and its OBX-8 flag; about one result in six is out of range."""
    low = a.low if a.low is not None else (a.high or 1) * 0.5
    high = a.high if a.high is not None else low * 2.0
    roll = rng.random()
    if roll < 0.08:
        value = rng.uniform(low * 0.7, low)
    elif roll < 0.17:
        value = rng.uniform(high, high * 1.4)
    else:
        value = rng.uniform(low, high)
    text = f"{value:.{a.decimals}f}"
    shown = float(text)
    # OBX-8, HL7 table 0078: L below, H above the reference range, N normal.
    flag = "N"
    if a.low is not None and shown < a.low:
        flag = "L"
    elif a.high is not None and shown > a.high:
        flag = "H"
    return text, flag


def oru_r01(
    patient: Patient,
    *,
    control_id: str,
    n_obx: int = 20,
    version: str = "2.5.1",
    sending_application: str = "LIS",
    sending_facility: str = "CHU-RABAT",
    receiving_application: str = "PASSERELLE",
    receiving_facility: str = "MA-DMP",
    when: datetime | None = None,
) -> str:
    """Write an ORU^R01 laboratory report as ER7 text, segments separated by CR.

    The ``n_obx`` results are the first ``n_obx`` of ``ANALYTES`` (cycled when more are asked),
    grouped by panel: one ORC and one OBR per panel, then its OBX NM results with UCUM units
    (OBX-6), reference range (OBX-7), abnormal flag (OBX-8) and status F (OBX-11).

    Args:
        patient: the patient.
        control_id: MSH-10.
        n_obx: how many OBX segments, at least 1.
        version: MSH-12, ``2.3`` to ``2.5.1``.
        sending_application, sending_facility: MSH-3 and MSH-4.
        receiving_application, receiving_facility: MSH-5 and MSH-6.
        when: MSH-7 and the results' time; ``None`` derives a reproducible 2025 time.

    Returns:
        The message text, without MLLP framing and without a trailing CR.

    Raises:
        ValueError: when ``n_obx`` is below 1.
    """
    if n_obx < 1:
        raise ValueError("an ORU^R01 report needs at least one OBX (n_obx >= 1)")
    rng = _rng_for(patient, control_id, "oru")
    moment = when if when is not None else _default_when(rng)
    collected = moment - timedelta(minutes=rng.randrange(30, 240))
    visit = _visit(rng, rng.choice("IOE"), collected)
    segments = [
        _msh(
            message_type="ORU",
            trigger="R01",
            structure="ORU_R01",
            control_id=control_id,
            version=version,
            sending_application=sending_application,
            sending_facility=sending_facility,
            receiving_application=receiving_application,
            receiving_facility=receiving_facility,
            when=moment,
        ),
        _pid(patient, version),
        _pv1(visit),
    ]
    doctor = _c(visit.doctor_id, visit.doctor_family, visit.doctor_given)
    chosen = [ANALYTES[i % len(ANALYTES)] for i in range(n_obx)]
    order = 0
    set_id = 0
    previous: tuple[int, str] | None = None
    for index, (panel, analyte) in enumerate(chosen):
        group = (index // len(ANALYTES), panel)
        if group != previous:
            previous = group
            order += 1
            set_id = 0
            placer = f"{control_id}-{order}"
            filler = f"LAB{rng.randrange(10**8):08d}"
            segments.append(
                _segment(
                    "ORC",
                    {1: "RE", 2: _c(placer, "HIS"), 3: _c(filler, "LIS"), 5: "CM", 12: doctor},
                )
            )
            segments.append(
                _segment(
                    "OBR",
                    {
                        1: str(order),
                        2: _c(placer, "HIS"),
                        3: _c(filler, "LIS"),
                        4: _c(panel, PANELS[panel][0], "LN"),
                        7: _ts(collected),
                        16: doctor,
                        22: _ts(moment),
                        25: "F",  # OBR-25 result status, HL7 table 0123: final
                    },
                )
            )
        set_id += 1
        value, flag = _result(rng, analyte)
        segments.append(
            _segment(
                "OBX",
                {
                    1: str(set_id),
                    2: "NM",
                    3: _c(analyte.loinc, analyte.name, "LN"),
                    4: "1",  # OBX-4 sub-id: one value per OBX-3 here; required by v2.3.1
                    5: value,
                    6: _c(analyte.unit, analyte.unit, "UCUM"),
                    7: escape(_reference_range(analyte)),
                    8: flag,
                    11: "F",  # OBX-11 observation result status, HL7 table 0085: final
                    14: _ts(collected),
                },
            )
        )
    return "\r".join(segments)


# --- Streams -----------------------------------------------------------------------------------

DEFAULT_MIX: Final[dict[str, float]] = {
    "ADT^A01": 0.25,
    "ADT^A04": 0.1,
    "ADT^A08": 0.1,
    "ADT^A03": 0.05,
    "ORU^R01": 0.5,
}
"""A plausible hospital day: half laboratory results, half patient administration."""


def stream(
    n: int,
    seed: int,
    mix: Mapping[str, float] | None = None,
    *,
    n_patients: int | None = None,
    facility: str = "CHU-RABAT",
    version: str = "2.5.1",
    n_obx: int = 20,
    control_prefix: str | None = None,
    start: datetime | None = None,
) -> Iterator[tuple[Patient, str, str]]:
    """Yield ``n`` messages ``(patient, event, er7)`` about a pool of patients, in send order.

    Several messages concern the same patient, so per-patient ordering can be checked. Control ids
    are ``control_prefix`` + a 9-digit sequence number: unique within one stream.

    Args:
        n: how many messages.
        seed: the seed; the same arguments give the same messages.
        mix: event (``ADT^A01`` … ``ORU^R01``) → relative weight; ``DEFAULT_MIX`` when ``None``.
        n_patients: the size of the patient pool; ``max(1, n // 4)`` when ``None``.
        facility: MSH-4 and the IPP assigning facility.
        version: MSH-12 of every message.
        n_obx: OBX segments per ORU^R01.
        control_prefix: MSH-10 prefix; ``S<seed>-`` when ``None``.
        start: the first message's time, later ones a few seconds apart; ``None`` derives
            reproducible times per message.

    Raises:
        ValueError: when the mix names an unsupported event or has no positive weight.
    """
    weights = dict(DEFAULT_MIX if mix is None else mix)
    for event in weights:
        kind, _, trigger = event.partition("^")
        if not ((kind == "ADT" and trigger in ADT_EVENTS) or event == "ORU^R01"):
            known = ", ".join(f"ADT^{e}" for e in ADT_EVENTS)
            msg = f"unsupported event {event!r} in mix; expected ORU^R01 or one of {known}"
            raise ValueError(msg)
    if not weights or sum(weights.values()) <= 0 or min(weights.values()) < 0:
        raise ValueError("the mix needs non-negative weights and at least one positive weight")
    pool = patients(n_patients or max(1, n // 4), seed, facility=facility)
    rng = random.Random(f"stream|{seed}")
    events: Sequence[str] = list(weights)
    prefix = f"S{seed}-" if control_prefix is None else control_prefix
    for i in range(n):
        patient = rng.choice(pool)
        event = rng.choices(events, weights=[weights[e] for e in events])[0]
        control_id = f"{prefix}{i:09d}"
        when = None if start is None else start + timedelta(seconds=3 * i)
        if event == "ORU^R01":
            er7 = oru_r01(
                patient,
                control_id=control_id,
                n_obx=n_obx,
                version=version,
                sending_facility=facility,
                when=when,
            )
        else:
            er7 = adt(
                patient,
                event.split("^")[1],
                control_id=control_id,
                version=version,
                sending_facility=facility,
                when=when,
            )
        yield patient, event, er7
