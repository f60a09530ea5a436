#!/usr/bin/env python3
"""Write the load kit's customer list and SIPp injection file (deterministic).

    loadtest/customers.csv                      300 customers: 60 senior, 90 middle, 150 junior
    loadtest/scenarios/busy_hour_callers.csv    their numbers plus 100 unknown ones, shuffled

Import the customers once (`python -m crm_bridge --config sip.conf import-customers
loadtest/customers.csv`); SIPp then draws callers at random (`-inf
busy_hour_callers.csv`), so every tier and the unknown-caller path are exercised.
"""

from __future__ import annotations

import random
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    rng = random.Random(2026)
    customers = (
        [(f"1380000{n:04d}", f"高净值客户{n}", 2_000_000 + n * 1000, 1_000_000, "senior") for n in range(60)]
        + [(f"1370000{n:04d}", f"中端客户{n}", 300_000 + n * 100, 200_000, "middle") for n in range(90)]
        + [(f"1360000{n:04d}", f"普通客户{n}", 10_000 + n, 5_000, "junior") for n in range(150)]
    )
    with (HERE / "customers.csv").open("w", encoding="utf-8") as f:
        f.write("phone,name,assets,volume,tier\n")
        f.writelines(f"{p},{name},{a},{v},{t}\n" for p, name, a, v, t in customers)
    numbers = [c[0] for c in customers] + [f"1590000{n:04d}" for n in range(100)]
    rng.shuffle(numbers)
    with (HERE / "scenarios" / "busy_hour_callers.csv").open("w") as f:
        f.write("RANDOM\n")
        f.writelines(f"{n};\n" for n in numbers)


if __name__ == "__main__":
    main()
