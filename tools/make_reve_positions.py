"""Generate mechinterp_c/data/reve_positions.json: idealised spherical 10-20 /
10-10 electrode positions (plus the extended 9/10 ring, fiducials, earlobes).

Construction (Oostenveld & Praamstra 2001, on a sphere):
  * head = sphere of radius 0.095 m (MNE's default head radius) centred at the
    origin; RAS axes: +x right (towards RPA), +y anterior (towards Nz), +z up
    (towards Cz). Nz, Iz, LPA (T9 level) and RPA lie on the equator z = 0.
  * the midline Nz-Cz-Iz and the coronal line LPA-Cz-RPA are great half
    circles divided in 10% steps (18 degrees each); Fpz, T7, Oz, T8 therefore
    lie on the 'circumference ring', the small circle at latitude 18 degrees.
  * around that ring the 10-10 points are 18 degrees of azimuth apart
    (Fpz 90, Fp1 108, AF7 126, F7 144, FT7 162, T7 180, TP7 198, P7 216, PO7 234,
    O1 252, Oz 270 degrees; azimuth counter-clockwise from +x, seen from above);
    the 9/10 ring (F9, FT9, T9, TP9, P9, PO9 and right-hand mates) is the same
    at latitude 0.
  * every row (AF, F, FC, C, CP, P, PO) is the circle through its left ring
    point, its midline point and its right ring point; the row's electrodes
    (x7 x5 x3 x1 xz x2 x4 x6 x8) divide each half of that arc in 4 equal angles.
  * A1/A2 (earlobes) and M1/M2 (mastoids) are off the grid: approximated as
    latitude -30 degrees at azimuth 180+/-10 (A) and 180+/-20 (M) degrees,
    mirrored for the right side.
  * old names are aliases: T3=T7, T4=T8, T5=P7, T6=P8.
Run: python3 tools/make_reve_positions.py  (writes the JSON next to the package).
"""
import json
import math
import os

import numpy as np

RADIUS = 0.095
RING = 18.0  # latitude of the 10% circumference ring, degrees


def sph(lat_deg, az_deg):
    """Unit vector at latitude/azimuth (degrees)."""
    la, az = math.radians(lat_deg), math.radians(az_deg)
    return np.array([math.cos(la) * math.cos(az), math.cos(la) * math.sin(az), math.sin(la)])


def midline(frac_from_nz):
    """Point on the Nz-Cz-Iz half circle at this fraction (0 = Nz, 1 = Iz)."""
    ang = math.radians(180.0 * frac_from_nz)
    return np.array([0.0, math.cos(ang), math.sin(ang)])


def arc_points(a, m, b, n_half=4):
    """Points dividing the circle arc a -> m -> b (through the sphere's plane section)
    into n_half equal angles on each side; returns 2*n_half+1 unit vectors."""
    # circle through the three points: centre c in their plane, on the sphere
    normal = np.cross(m - a, b - a)
    normal /= np.linalg.norm(normal)
    c = normal * np.dot(normal, a)  # plane section centre (closest point to origin)
    out = []
    for p, q in ((a, m), (m, b)):
        u, v = p - c, q - c
        r = np.linalg.norm(u)
        theta = math.acos(np.clip(np.dot(u, v) / (r * np.linalg.norm(v)), -1, 1))
        w = v - np.dot(v, u) / (r * r) * u
        w = w / np.linalg.norm(w) * r
        for k in range(n_half):
            t = theta * k / n_half
            out.append(c + math.cos(t) * u + math.sin(t) * w)
    out.append(b)
    return [x / np.linalg.norm(x) for x in out]


def build():
    pos = {}
    ring_az = {"Fp": 108, "AF": 126, "F": 144, "FC": 162, "C": 180, "CP": 198, "P": 216,
               "PO": 234, "O": 252}
    mid_frac = {"Fp": 0.1, "AF": 0.2, "F": 0.3, "FC": 0.4, "C": 0.5, "CP": 0.6, "P": 0.7,
                "PO": 0.8, "O": 0.9}
    ring_names = {"AF": ("AF7", "AF8"), "F": ("F7", "F8"), "FC": ("FT7", "FT8"),
                  "C": ("T7", "T8"), "CP": ("TP7", "TP8"), "P": ("P7", "P8"),
                  "PO": ("PO7", "PO8")}
    for row, (lname, rname) in ring_names.items():
        left = sph(RING, ring_az[row])
        right = sph(RING, 180 - ring_az[row])
        pts = arc_points(left, midline(mid_frac[row]), right)
        names = [lname, f"{row}5", f"{row}3", f"{row}1", f"{row}z", f"{row}2", f"{row}4",
                 f"{row}6", rname]
        for n, p in zip(names, pts):
            pos[n] = p
    pos["Fp1"], pos["Fpz"], pos["Fp2"] = sph(RING, 108), sph(RING, 90), sph(RING, 72)
    pos["O1"], pos["Oz"], pos["O2"] = sph(RING, 252), sph(RING, 270), sph(RING, 288)
    for name, az in (("F9", 144), ("FT9", 162), ("T9", 180), ("TP9", 198), ("P9", 216),
                     ("PO9", 234)):
        pos[name] = sph(0, az)
        pos[name[:-1] + "10"] = sph(0, 180 - az)
    pos["Nz"], pos["Iz"] = sph(0, 90), sph(0, 270)
    pos["LPA"], pos["RPA"] = sph(0, 180), sph(0, 0)
    pos["A1"], pos["A2"] = sph(-30, 190), sph(-30, -10)
    pos["M1"], pos["M2"] = sph(-30, 200), sph(-30, -20)
    for old, new in (("T3", "T7"), ("T4", "T8"), ("T5", "P7"), ("T6", "P8")):
        pos[old] = pos[new]
    return {k: [round(float(c) * RADIUS, 6) for c in v] for k, v in pos.items()}


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    path = os.path.join(here, "..", "mechinterp_c", "data", "reve_positions.json")
    doc = {
        "__metadata__": {
            "source": "computed by tools/make_reve_positions.py from the idealised spherical "
                      "10-10 definition (Oostenveld & Praamstra 2001); not MNE's digitised "
                      "standard_1005 and not brain-bzh/reve-positions",
            "unit": "meter",
            "radius": RADIUS,
            "convention": "RAS head frame, origin at the sphere centre: +x right (RPA), "
                          "+y anterior (Nz), +z up (Cz); Nz/Iz/LPA/RPA on z=0",
            "aliases": "T3=T7, T4=T8, T5=P7, T6=P8",
            "approximate": "A1, A2 (earlobes) and M1, M2 (mastoids) are off the 10-10 grid: "
                           "latitude -30 deg, azimuth 180+/-10 and 180+/-20 deg",
        },
        "positions": build(),
    }
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    print(f"wrote {len(doc['positions'])} positions to {os.path.normpath(path)}")


if __name__ == "__main__":
    main()
