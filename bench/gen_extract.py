"""A deterministic synthetic ``Extraction_Correspondance_MSSante`` file for the benchmarks.

Same format as the public extract (UTF-8, ``|``-separated, 31 columns, the real header):
people with accented and compound French names, RPPS numbers, the usual professions and
medical skills, hospitals, clinics, practices and pharmacies spread over real towns, and
about 5 % organisational mailboxes. The same ``--rows`` and ``--seed`` always give the same
bytes, so figures measured on two machines are measured on the same file.

    python bench/gen_extract.py --rows 535000 --out bench/out/extract_535000.txt
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

from unidecode import unidecode

if str(Path(__file__).resolve().parent.parent) not in sys.path:  # run alone; bench_directory has placed it
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from directory.extract import HEADER, SEPARATOR

LAST_NAMES = (
    "MARTIN BERNARD THOMAS PETIT ROBERT RICHARD DURAND DUBOIS MOREAU LAURENT SIMON MICHEL "
    "LEFÈBVRE LEFEBVRE LEROY ROUX DAVID BERTRAND MOREL FOURNIER GIRARD BONNET DUPONT LAMBERT "
    "FONTAINE ROUSSEAU VINCENT MULLER MÜLLER LEFÈVRE FAURE ANDRÉ MERCIER BLANC GUÉRIN BOYER "
    "GARNIER CHEVALIER FRANÇOIS LEGRAND GAUTHIER GARCIA PERRIN ROBIN CLÉMENT MORIN NICOLAS "
    "HENRY ROUSSEL MATHIEU GAUTIER MASSON MARCHAND DUVAL DENIS DUMONT MARIE LEMAIRE NOËL "
    "MEYER DUFOUR MEUNIER BRUN BLANCHARD GIRAUD JOLY RIVIÈRE LUCAS BRUNET GAILLARD BARBIER "
    "ARNAUD MARTINEZ GÉRARD ROCHE RENARD SCHMITT ROY LEROUX COLIN VIDAL CARON PICARD ROGER "
    "FABRE AUBERT LEMOINE RENAUD DUMAS LACROIX OLIVIER PHILIPPE BOURGEOIS PIERRE BENOÎT REY "
    "LECLERC PAYET ROLLAND LECLERCQ GUILLAUME LECOMTE LOPEZ JEAN DUPUY GUILLOT HUBERT BERGER "
    "CARPENTIER SANCHEZ DUPUIS MOULIN LOUIS DESCHAMPS HUET VASSEUR PEREZ BOUCHER FLEURY "
    "ROYER KLEIN JACQUET ADAM PARIS POIRIER MARTY AUBRY GUYOT CARRÉ CHARLES RENAULT "
    "CHARPENTIER MÉNARD MAILLARD BARON BERTIN BAILLY HERVÉ SCHNEIDER FERNANDEZ COLLET LÉGER "
    "BOUVIER JULIEN PRÉVOST MILLET PERROT DANIEL COUSIN GERMAIN BRETON BESSON LANGLOIS RÉMY "
    "PELLETIER LÉVÊQUE PERRIER LEBLANC BARRÉ LEBRUN MARCHAL WEBER MALLET HAMON BOULANGER "
    "JACOB MONNIER MICHAUD RODRIGUEZ GUICHARD GILLET ÉTIENNE GRONDIN POULAIN TESSIER "
    "CHEVALLIER COLLIN CHAUVIN BOUCHET GAY LEMAÎTRE BÉNARD MARÉCHAL HUMBERT REYNAUD ANTOINE "
    "HOARAU PERRET BARTHÉLEMY CORDIER PICHON LEJEUNE GILBERT LAMY DELAUNAY PASQUIER CARLIER "
    "LAPORTE DIALLO TRAORÉ NGUYEN KOWALSKI FERREIRA HADDAD OUEDRAOGO CŒUR LÆNNEC"
).split() + [
    "LE GOFF",
    "LE GALL",
    "LE ROUX",
    "DA SILVA",
    "N'DIAYE",
    "BEN SAÏD",
    "EL AMRANI",
    "SAINT-JUST",
    "DE LA FONTAINE",
    "D'ARGENT",
    "LEFÈBVRE-DUCROCQ",
    "MARTIN-LÉGER",
    "DU PLESSIS",
    "LE BRIS",
]

FIRST_NAMES = (
    "Jean Marie Pierre Michel Philippe Nathalie Isabelle Sylvie Catherine Françoise Hélène "
    "Éloïse Chloé Anaïs Maëlys Noël Loïc Cédric Benoît Jérôme Stéphane Sébastien Frédéric "
    "Valérie Véronique Aurélie Émilie Élodie Céline Mélanie Gaëlle Zoé Léa Inès Léo Mathéo "
    "Théo Raphaël Joël Clément Jérémy Amélie Agnès Thérèse Geneviève Josée Andrée René Hervé "
    "Grégoire Ségolène Bérénice Capucine Lætitia Laetitia Noémie Héloïse Maïwenn Gwénaëlle "
    "Aïcha Fatoumata Mohamed Karim Yasmine Marc Paul Louis Lucas Hugo Arthur Jules Gabriel "
    "Adam Nathan Thomas Julien Nicolas Antoine Alexandre Camille Manon Sarah Julie Laura "
    "Pauline Claire Sophie Anne Christine Martine Monique Brigitte Danielle Patrick Alain "
    "Bernard Daniel Christophe Laurent Olivier Vincent David Éric Thierry Pascal Yves Xavier "
    "Mathilde Margaux Océane Clémence Justine Estelle Ophélie Maëva Bastien Rémi Timothée"
).split() + [
    "Jean-Baptiste",
    "Marie-Hélène",
    "Anne-Sophie",
    "Jean-François",
    "François-Xavier",
    "Marie-Thérèse",
    "Jean-Noël",
    "Pierre-Étienne",
    "Thi Hoa",
    "Marie-Ève",
]

# (label in upper case as on the L6 line, postal code, department, relative size)
CITIES = (
    ("PARIS", "75013", "75", 60),
    ("MARSEILLE", "13005", "13", 25),
    ("LYON", "69003", "69", 22),
    ("TOULOUSE", "31059", "31", 15),
    ("NICE", "06000", "06", 11),
    ("NANTES", "44093", "44", 10),
    ("STRASBOURG", "67091", "67", 10),
    ("MONTPELLIER", "34295", "34", 10),
    ("BORDEAUX", "33076", "33", 10),
    ("LILLE", "59037", "59", 10),
    ("RENNES", "35033", "35", 8),
    ("REIMS", "51092", "51", 5),
    ("LE HAVRE", "76600", "76", 5),
    ("SAINT-ÉTIENNE", "42055", "42", 5),
    ("TOULON", "83000", "83", 5),
    ("GRENOBLE", "38043", "38", 6),
    ("DIJON", "21079", "21", 5),
    ("ANGERS", "49933", "49", 4),
    ("NÎMES", "30029", "30", 4),
    ("VILLEURBANNE", "69100", "69", 3),
    ("CLERMONT-FERRAND", "63003", "63", 5),
    ("LE MANS", "72037", "72", 4),
    ("AIX-EN-PROVENCE", "13100", "13", 4),
    ("BREST", "29609", "29", 4),
    ("TOURS", "37044", "37", 4),
    ("AMIENS", "80054", "80", 4),
    ("LIMOGES", "87042", "87", 4),
    ("ANNECY", "74000", "74", 3),
    ("PERPIGNAN", "66046", "66", 3),
    ("BOULOGNE-BILLANCOURT", "92100", "92", 3),
    ("METZ", "57038", "57", 3),
    ("BESANÇON", "25030", "25", 3),
    ("ORLÉANS", "45067", "45", 3),
    ("ROUEN", "76031", "76", 4),
    ("MULHOUSE", "68070", "68", 3),
    ("CAEN", "14033", "14", 4),
    ("NANCY", "54035", "54", 4),
    ("ARGENTEUIL", "95100", "95", 2),
    ("SAINT-DENIS", "93200", "93", 2),
    ("ROUBAIX", "59100", "59", 2),
    ("TOURCOING", "59200", "59", 2),
    ("MONTREUIL", "93100", "93", 2),
    ("AVIGNON", "84902", "84", 2),
    ("CRÉTEIL", "94010", "94", 3),
    ("POITIERS", "86021", "86", 3),
    ("PAU", "64046", "64", 2),
    ("LA ROCHELLE", "17019", "17", 2),
    ("CALAIS", "62100", "62", 1),
    ("CANNES", "06400", "06", 2),
    ("ANTIBES", "06600", "06", 1),
    ("BÉZIERS", "34500", "34", 2),
    ("COLMAR", "68024", "68", 2),
    ("ÉVREUX", "27000", "27", 2),
    ("QUIMPER", "29000", "29", 2),
    ("VALENCE", "26953", "26", 2),
    ("TROYES", "10003", "10", 2),
    ("CHAMBÉRY", "73011", "73", 2),
    ("LORIENT", "56100", "56", 1),
    ("NIORT", "79021", "79", 1),
    ("BEAUVAIS", "60021", "60", 1),
    ("CHÂTEAUROUX", "36019", "36", 1),
    ("CHERBOURG-EN-COTENTIN", "50100", "50", 1),
    ("SAINT-NAZAIRE", "44606", "44", 1),
    ("VANNES", "56017", "56", 1),
    ("ARLES", "13637", "13", 1),
    ("SAINT-MALO", "35403", "35", 1),
    ("BOURGES", "18020", "18", 1),
    ("ÉPINAL", "88021", "88", 1),
    ("BLOIS", "41016", "41", 1),
    ("AJACCIO", "20090", "2A", 1),
    ("BASTIA", "20604", "2B", 1),
    ("FORT-DE-FRANCE", "97261", "972", 2),
    ("SAINT-PIERRE", "97410", "974", 2),
    ("POINTE-À-PITRE", "97159", "971", 2),
    ("CAYENNE", "97306", "973", 1),
    ("MÂCON", "71018", "71", 1),
    ("MONTÉLIMAR", "26216", "26", 1),
    ("SÈTE", "34207", "34", 1),
    ("FRÉJUS", "83608", "83", 1),
    ("HYÈRES", "83407", "83", 1),
    ("ALBI", "81013", "81", 1),
    ("RODEZ", "12027", "12", 1),
    ("CAHORS", "46005", "46", 1),
    ("AGEN", "47923", "47", 1),
    ("MONT-DE-MARSAN", "40024", "40", 1),
    ("BAYONNE", "64109", "64", 1),
    ("TARBES", "65013", "65", 1),
    ("FOIX", "09017", "09", 1),
    ("CARCASSONNE", "11890", "11", 1),
    ("NARBONNE", "11108", "11", 1),
    ("GAP", "05007", "05", 1),
    ("DIGNE-LES-BAINS", "04003", "04", 1),
    ("PRIVAS", "07007", "07", 1),
    ("LE PUY-EN-VELAY", "43012", "43", 1),
    ("AURILLAC", "15002", "15", 1),
    ("MOULINS", "03006", "03", 1),
    ("NEVERS", "58033", "58", 1),
    ("AUXERRE", "89011", "89", 1),
    ("CHAUMONT", "52014", "52", 1),
    ("BAR-LE-DUC", "55012", "55", 1),
    ("CHARLEVILLE-MÉZIÈRES", "08011", "08", 1),
    ("LAON", "02001", "02", 1),
    ("ARRAS", "62022", "62", 1),
    ("SAINT-LÔ", "50009", "50", 1),
    ("ALENÇON", "61014", "61", 1),
    ("LAVAL", "53015", "53", 1),
    ("LA ROCHE-SUR-YON", "85925", "85", 1),
    ("ANGOULÊME", "16959", "16", 1),
    ("PÉRIGUEUX", "24019", "24", 1),
    ("TULLE", "19012", "19", 1),
    ("GUÉRET", "23011", "23", 1),
    ("MENDE", "48001", "48", 1),
    ("CHARTRES", "28018", "28", 1),
    ("MELUN", "77011", "77", 1),
    ("VERSAILLES", "78157", "78", 2),
    ("ÉVRY-COURCOURONNES", "91014", "91", 1),
    ("NANTERRE", "92014", "92", 1),
    ("BOBIGNY", "93009", "93", 1),
    ("CERGY", "95503", "95", 1),
    ("LONS-LE-SAUNIER", "39016", "39", 1),
    ("VESOUL", "70014", "70", 1),
    ("BELFORT", "90016", "90", 1),
    ("BOURG-EN-BRESSE", "01012", "01", 1),
    ("SAINT-BRIEUC", "22027", "22", 1),
    ("CHÂLONS-EN-CHAMPAGNE", "51005", "51", 1),
    ("DUNKERQUE", "59385", "59", 1),
    ("VALENCIENNES", "59322", "59", 1),
    ("COMPIÈGNE", "60321", "60", 1),
    ("THIONVILLE", "57126", "57", 1),
    ("HAGUENAU", "67504", "67", 1),
    ("SÉLESTAT", "67606", "67", 1),
    ("LUNÉVILLE", "54301", "54", 1),
)

# (code, label, relative share, skills) -- skills are (code, label) for physicians only.
SPECIALTIES = (
    ("SM26", "Qualifié en Médecine Générale"),
    ("SM04", "Cardiologie et maladies vasculaires"),
    ("SM40", "Pédiatrie"),
    ("SM44", "Radio-diagnostic"),
    ("SM20", "Gynécologie-obstétrique"),
    ("SM42", "Psychiatrie"),
    ("SM15", "Dermatologie et vénéréologie"),
    ("SM38", "Ophtalmologie"),
    ("SM02", "Anesthésie-réanimation"),
    ("SM32", "Neurologie"),
    ("SM53", "Rhumatologie"),
    ("SM24", "Hépato-gastro-entérologie"),
    ("SM30", "Néphrologie"),
    ("SM39", "Oto-rhino-laryngologie"),
    ("SM48", "Chirurgie orthopédique et traumatologie"),
    ("SM54", "Médecine d'urgence"),
    ("SM28", "Médecine interne"),
    ("SM47", "Oncologie médicale"),
    ("SM49", "Pneumologie"),
    ("SM18", "Endocrinologie, diabète, maladies métaboliques"),
)
PROFESSIONS = (
    ("10", "Médecin", 36),
    ("60", "Infirmier", 20),
    ("21", "Pharmacien", 12),
    ("70", "Masseur-Kinésithérapeute", 10),
    ("40", "Chirurgien-Dentiste", 6),
    ("50", "Sage-Femme", 4),
    ("91", "Orthophoniste", 3),
    ("80", "Pédicure-Podologue", 2),
    ("28", "Opticien-Lunetier", 2),
    ("26", "Audioprothésiste", 1),
    ("92", "Orthoptiste", 1),
    ("94", "Ergothérapeute", 1),
    ("95", "Psychomotricien", 1),
    ("96", "Manipulateur ERM", 1),
)
PROFESSION_DOMAINS = {
    "10": "medecin",
    "60": "infirmier",
    "21": "pharmacien",
    "70": "kine",
    "40": "dentiste",
    "50": "sagefemme",
    "91": "orthophoniste",
    "80": "podologue",
    "28": "opticien",
    "26": "audioprothesiste",
    "92": "orthoptiste",
    "94": "ergotherapeute",
    "95": "psychomotricien",
    "96": "manipulateur",
}
HOSPITAL_SERVICES = (
    "Urgences adultes",
    "Urgences pédiatriques",
    "Pédiatrie",
    "Cardiologie",
    "Chirurgie viscérale",
    "Réanimation médicale",
    "Maternité",
    "Oncologie",
    "Radiologie",
    "Gériatrie",
    "Néphrologie",
    "Pneumologie",
    "Neurologie",
    "Psychiatrie adulte",
    "Bloc opératoire",
    "Laboratoire de biologie",
    "Médecine interne",
    "Soins de suite et réadaptation",
    "Pharmacie à usage intérieur",
    "",
)
STREETS = (
    ("RUE", "de la République"),
    ("AV", "Victor Hugo"),
    ("BD", "du Général de Gaulle"),
    ("RUE", "Jean Jaurès"),
    ("RUE", "Pasteur"),
    ("RUE", "des Écoles"),
    ("PL", "de l'Église"),
    ("AV", "Gambetta"),
    ("RUE", "Carnot"),
    ("AV", "du Maréchal Foch"),
    ("RUE", "de la Gare"),
    ("RUE", "Émile Zola"),
    ("ALL", "des Tilleuls"),
    ("CHE", "du Château"),
    ("RUE", "Saint-Éloi"),
    ("QUAI", "de la Seine"),
    ("IMP", "des Lilas"),
    ("RTE", "de Paris"),
    ("BD", "Pierre Brossolette"),
    ("RUE", "Léon Blum"),
    ("AV", "Jean Moulin"),
    ("RUE", "du Docteur Roux"),
    ("PL", "du Marché"),
)
SAINTS = (
    "Saint-Joseph",
    "Saint-Martin",
    "Saint-Jean",
    "Saint-Louis",
    "Sainte-Anne",
    "Saint-Vincent",
    "Saint-Michel",
    "Sainte-Thérèse",
    "Saint-Côme",
    "Sainte-Marie",
)
# Syllables for the long tail of surnames: France has about a million distinct surnames and
# even MARTIN, the most common, is only about 0.4 % of people.
ONSETS = ("B", "BR", "C", "CH", "D", "F", "G", "GR", "J", "L", "M", "N", "P", "PR", "R", "S", "T", "TR", "V", "QU")
VOWELS = ("A", "E", "I", "O", "OU", "AU", "É", "EI", "AI", "U", "È", "OI")
CODAS = ("R", "RD", "RT", "L", "N", "NT", "S", "T", "", "LL", "RN", "SS", "C", "G", "M")
ENDINGS = (
    "AND",
    "ET",
    "IER",
    "IN",
    "OT",
    "ON",
    "EAU",
    "ÈRE",
    "AS",
    "EL",
    "ENT",
    "OIS",
    "AUD",
    "ARD",
    "ÉE",
    "IAU",
    "OUX",
    "ELLE",
    "Y",
    "ÈS",
    "AC",
    "EC",
    "IÈRE",
    "ON",
    "AT",
    "ILLE",
    "E",
    "ERT",
)
COMMON_NAME_SHARE = 0.10  # people carrying one of LAST_NAMES; the rest get a long-tail name
TREES = ("Tilleuls", "Chênes", "Érables", "Peupliers", "Châtaigniers", "Mûriers", "Lilas", "Acacias")


def _slug(text: str) -> str:
    """ASCII, lower-case, words joined by hyphens: the form names take in an address."""
    words = "".join(c if c.isalnum() else " " for c in unidecode(text).lower()).split()
    return "-".join(words)


class Organisation:
    """A structure where professionals work: its identifiers, name and postal address."""

    def __init__(self, rng: random.Random, number: int, kind: str, city: tuple[str, str, str, int]) -> None:
        label, postal_code, department, _ = city
        town = label.title()
        self.kind = kind
        self.hospital = kind in ("chu", "ch", "clinic")
        street_type, street = rng.choice(STREETS)
        of_town = f"d'{town}" if unidecode(town)[0] in "AEIOUY" else f"de {town}"
        if kind == "chu":
            self.name, self.trade = f"Centre Hospitalier Universitaire {of_town}", f"CHU {town}"
            self.domain = f"chu-{_slug(town)}.mss.test"
        elif kind == "ch":
            self.name, self.trade = f"Centre Hospitalier {of_town}", f"CH {town}"
            self.domain = f"ch-{_slug(town)}.mss.test"
        elif kind == "clinic":
            saint = rng.choice(SAINTS)
            self.name, self.trade = f"Clinique {saint}", f"Clinique {saint} {town}"
            self.domain = f"clinique-{_slug(saint)}-{_slug(town)}-{number}.mss.test"
        elif kind == "pharmacy":
            self.name, self.trade = f"Pharmacie {street}", f"Pharmacie {street.split()[-1]}"
            self.domain = "pharmacien.mss.test"
        elif kind == "msp":
            self.name, self.trade = f"Maison de santé pluriprofessionnelle {of_town}", f"MSP {town}"
            self.domain = "msp.mss.test"
        else:
            self.name, self.trade = f"Cabinet médical des {rng.choice(TREES)}", ""
            self.domain = ""  # people in a practice use their profession's domain
        self.id_type = "1" if self.hospital else "3"
        # FINESS (type 1) is 9 digits after the type; SIRET (type 3) is 14 digits.
        self.id = f"{department[:2]}{number:07d}" if self.hospital else f"{number:09d}{rng.randrange(10000, 99999)}"
        if self.id_type == "1":
            self.id = "1" + self.id.replace("A", "0").replace("B", "0")
        cedex = self.hospital and rng.random() < 0.7
        self.address = (
            rng.choice(("Bâtiment A", "Pavillon Derocque", "Hall 2", "")) if self.hospital else "",
            rng.choice(("BP 12", "CS 30001", "")) if rng.random() < 0.2 else "",
            str(rng.randrange(1, 200)),
            rng.choice(("", "", "", "", "bis", "ter")),
            street_type,
            street,
            "",
            f"{postal_code} {label}{' CEDEX' if cedex else ''}",
            postal_code,
            department,
            "France",
        )


def _long_tail_name(rng: random.Random) -> str:
    name = rng.choice(ONSETS) + rng.choice(VOWELS) + rng.choice(CODAS)
    if rng.random() < 0.5:
        name += rng.choice(ONSETS) + rng.choice(VOWELS)
    name += rng.choice(ENDINGS)
    if rng.random() < 0.04:
        name = rng.choice(("LE ", "DE ", "DU ", "DA ", "LA ")) + name
    elif rng.random() < 0.03:
        name += "-" + rng.choice(LAST_NAMES)
    return name


def _weighted(rng: random.Random, items: list, weights: list[float]):
    return rng.choices(items, cum_weights=weights, k=1)[0]


def _cumulative(weights: list[float]) -> list[float]:
    total, out = 0.0, []
    for w in weights:
        total += w
        out.append(total)
    return out


def generate(rows: int, out: Path, seed: int = 20260101) -> int:
    """Write ``rows`` data lines (plus the header) to ``out``; return the number written."""
    rng = random.Random(seed)
    cities = list(CITIES)
    city_weights = _cumulative([c[3] for c in cities])
    # Zipf-like: a few very common names, a long tail (as in real registers).
    last_weights = _cumulative([1.0 / (rank + 1) ** 0.6 for rank in range(len(LAST_NAMES))])
    first_weights = _cumulative([1.0 / (rank + 1) ** 0.5 for rank in range(len(FIRST_NAMES))])
    professions = list(PROFESSIONS)
    profession_weights = _cumulative([p[2] for p in professions])

    organisations: list[Organisation] = []
    kinds = ("chu", "ch", "clinic", "clinic", "practice", "practice", "practice", "pharmacy", "pharmacy", "msp")
    org_count = max(10, rows // 60)
    for number in range(1, org_count + 1):
        city = _weighted(rng, cities, city_weights)
        organisations.append(Organisation(rng, number, rng.choice(kinds), city))
    # A professional works in a hospital about a third of the time.
    hospitals = [o for o in organisations if o.hospital]
    others = [o for o in organisations if not o.hospital]

    used: set[str] = set()
    rpps_base = 10000000000
    rpps_step = 7919  # a prime: successive RPPS numbers look scattered, never collide

    def unique(local: str, domain: str) -> str:
        address = f"{local}@{domain}"
        n = 1
        while address in used:
            n += 1
            address = f"{local}{n}@{domain}"
        used.add(address)
        return address

    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8", newline="\n") as handle:
        handle.write(SEPARATOR.join(HEADER) + "\n")
        for index in range(rows):
            org = rng.choice(hospitals) if rng.random() < 0.35 else rng.choice(others)
            if rng.random() < 0.05:
                service = rng.choice(HOSPITAL_SERVICES) if org.hospital else ""
                local = _slug(service or rng.choice(("secretariat", "accueil", "contact", "coordination")))
                domain = org.domain or "structures.mss.test"
                values = (
                    "ORG",
                    unique(local.replace("-", "."), domain),
                    "",
                    "",
                    "",
                    org.id_type,
                    org.id,
                    service,
                    "",
                    "",
                    "",
                    "",
                    "",
                    "",
                    "",
                    "",
                    "",
                    rng.choice("ON"),
                    org.name,
                    org.trade,
                    *org.address,
                )
            else:
                if rng.random() < COMMON_NAME_SHARE:
                    last = _weighted(rng, LAST_NAMES, last_weights)
                else:
                    last = _long_tail_name(rng)
                first = _weighted(rng, FIRST_NAMES, first_weights)
                code, label, _ = _weighted(rng, professions, profession_weights)
                skill_code, skill_label = rng.choice(SPECIALTIES) if code == "10" else ("", "")
                if code == "10" and rng.random() < 0.8:
                    civility = rng.choice(("DR", "DR", "PR"))
                else:
                    civility = rng.choice(("M", "MME"))
                rpps = str(rpps_base + (index * rpps_step) % 9000000000)
                domain = org.domain or f"{PROFESSION_DOMAINS[code]}.mss.test"
                service = rng.choice(HOSPITAL_SERVICES) if org.hospital else ""
                values = (
                    "PER",
                    unique(f"{_slug(first)}.{_slug(last)}", domain),
                    "8",
                    rpps,
                    "8" + rpps,
                    org.id_type,
                    org.id,
                    service,
                    civility,
                    last,
                    first,
                    "C",
                    "Civil",
                    code,
                    label,
                    skill_code,
                    skill_label,
                    rng.choice("ON"),
                    org.name,
                    org.trade,
                    *org.address,
                )
            handle.write(SEPARATOR.join(values) + "\n")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=535_000, help="data lines to write (default 535000)")
    parser.add_argument("--out", type=Path, required=True, help="file to write")
    parser.add_argument("--seed", type=int, default=20260101, help="random seed (default 20260101)")
    args = parser.parse_args(argv)
    if args.rows < 1:
        parser.error("--rows must be at least 1")
    generate(args.rows, args.out, args.seed)
    print(f"wrote {args.rows} rows to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
