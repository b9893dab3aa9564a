"""Write examples/events.jsonl: 3000 made-up but realistic Vitally messages of every type.

    python examples/make_events.py            # rewrites examples/events.jsonl (same bytes every time)
    python examples/make_events.py -n 100000 -o big.jsonl

The history spans 2023-01 to 2024-06: organizations, then their accounts, their
users, the users' product events, account trait changes (plan, MRR), deals (a
custom object) moving through stages, and users unlinked from accounts. Track
events carry a messageId as a warehouse export would; the other lines have
none, so the importer derives one. Most timestamps are UTC with milliseconds;
some have an offset (``-05:00``) or no milliseconds, as exports often do.
"""

from __future__ import annotations

import argparse
import json
import random
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Dict, List, Tuple

SEED = 20240101
START = datetime(2023, 1, 2, 9, 0, tzinfo=timezone.utc)
END = datetime(2024, 6, 28, 18, 0, tzinfo=timezone.utc)
DEALS_OBJECT_ID = "co_7f3a9c2e-deals"

COMPANIES = [
    "Northwind Traders", "Globex", "Initech", "Umbrella Health", "Stark Logistics",
    "Wayne Analytics", "Acme Robotics", "Soylent Foods",
]  # fmt: skip
TEAMS = ["Sales", "Support", "Marketing", "Finance", "Engineering", "Operations", "EMEA", "APAC", "Research"]
FIRST = ["Ana", "Ben", "Chloé", "Dmitri", "Emma", "Farid", "Grace", "Hiro", "Inès", "Jonas", "Kemi", "Lars",
         "María", "Noah", "Olu", "Priya", "Quinn", "Rosa", "Sven", "Tomás", "Uma", "Vikram", "Wen", "Zoë"]  # fmt: skip
LAST = ["Okafor", "Schmidt", "García", "Nguyen", "Kowalski", "Haddad", "Ito", "Larsen", "Silva", "Brown",
        "Dubois", "Rossi", "Chen", "Patel", "Müller", "Johansson"]  # fmt: skip
PLANS = ["starter", "growth", "enterprise"]
EVENTS: List[Tuple[str, int]] = [
    ("logged-in", 30), ("report-viewed", 20), ("dashboard-created", 6), ("report-exported", 8),
    ("invite-sent", 5), ("integration-connected", 3), ("alert-configured", 4), ("comment-added", 10),
    ("search-performed", 12), ("plan-upgrade-viewed", 2),
]  # fmt: skip
STAGES = ["qualified", "proposal", "negotiation", "closed-won", "closed-lost"]

Message = Dict[str, Any]


class History:
    """Messages in the making, each with the moment it happened."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.items: List[Tuple[datetime, int, Message]] = []

    def add(self, when: datetime, message: Message) -> None:
        self.items.append((when, len(self.items), message))

    def between(self, start: datetime, end: datetime = END) -> datetime:
        seconds = max(0.0, (end - start).total_seconds())
        return start + timedelta(seconds=self.rng.uniform(0, seconds), microseconds=self.rng.randrange(1000) * 1000)

    def stamp(self, when: datetime) -> str:
        """Mostly Vitally's own form; one in ten the way other exports write it."""
        roll = self.rng.random()
        if roll < 0.05:
            return when.astimezone(timezone(timedelta(hours=-5))).isoformat(timespec="milliseconds")
        if roll < 0.10:
            return when.replace(microsecond=0).isoformat()
        return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"

    def lines(self) -> List[str]:
        ordered = sorted(self.items, key=lambda item: (item[0], item[1]))
        out = []
        for when, _, message in ordered:
            message["timestamp"] = self.stamp(when)
            out.append(json.dumps(message, ensure_ascii=False, separators=(",", ":")))
        return out


def generate(count: int, seed: int = SEED) -> List[str]:
    """``count`` JSON lines, the same for the same seed."""
    if count < 1000:
        raise ValueError(f"count must be at least 1000 (the accounts, users and deals take about 600), not {count}")
    rng = random.Random(seed)
    history = History(rng)
    scale = max(1, count // 3000)

    organizations = []
    for number, company in enumerate(COMPANIES * scale, 1):
        org_id = f"org_{number:04d}"
        created = history.between(START, START + timedelta(days=30))
        organizations.append((org_id, created, company))
        traits: Message = {
            "name": company,
            "industry": rng.choice(["retail", "health", "logistics", "software", "food"]),
        }
        history.add(created, {"type": "organization", "organizationId": org_id, "traits": traits})

    accounts = []
    for number in range(1, 40 * scale + 1):
        org_id, org_created, company = rng.choice(organizations)
        account_id = f"acct_{number:05d}"
        created = history.between(org_created, org_created + timedelta(days=120))
        plan = rng.choice(PLANS)
        traits = {
            "name": f"{company} {rng.choice(TEAMS)}",
            "plan": plan,
            "mrr": rng.choice([99, 299, 990, 2490]),
        }
        message = {"type": "account", "accountId": account_id, "organizationId": org_id, "traits": traits}
        history.add(created, message)
        accounts.append((account_id, org_id, created))
        for _ in range(rng.randrange(0, 4)):  # plan and MRR changes: the history Vitally keeps per trait
            changed = {
                "plan": rng.choice(PLANS),
                "mrr": rng.choice([99, 299, 990, 2490, 4990]),
                "seats": rng.randrange(3, 80),
            }
            history.add(history.between(created), {"type": "account", "accountId": account_id, "traits": changed})

    users = []
    for number in range(1, 240 * scale + 1):
        account_id, org_id, account_created = rng.choice(accounts)
        user_id = f"usr_{number:06d}"
        created = history.between(account_created, account_created + timedelta(days=200))
        first, last = rng.choice(FIRST), rng.choice(LAST)
        traits = {
            "name": f"{first} {last}",
            "email": f"{first.lower()}.{last.lower()}{number}@example.com",
            "createdAt": created.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
            "role": rng.choice(["admin", "member", "member", "viewer"]),
        }
        message = {
            "type": "user",
            "userId": user_id,
            "accountId": account_id,
            "organizationId": org_id,
            "traits": traits,
        }
        history.add(created, message)
        users.append((user_id, account_id, created))

    for number in range(1, 45 * scale + 1):
        account_id, _, account_created = rng.choice(accounts)
        deal_id = f"deal_{number:05d}"
        when = history.between(account_created)
        amount = rng.randrange(10, 400) * 100
        for stage in [*STAGES[: rng.randrange(1, 4)], rng.choice(STAGES[3:])]:
            traits = {"stage": stage, "amount": amount, "currency": "USD"}
            message = {
                "type": "customobjectinstance",
                "externalId": deal_id,
                "customObjectId": DEALS_OBJECT_ID,
                "name": f"Renewal {deal_id[-3:]}",
                "accountId": account_id,
                "traits": traits,
            }
            history.add(when, message)
            when = history.between(when, min(END, when + timedelta(days=45)))

    for user_id, account_id, created in rng.sample(users, 30 * scale):
        history.add(history.between(created), {"type": "unlink", "userId": user_id, "accountId": account_id})

    names = [name for name, _ in EVENTS]
    weights = [weight for _, weight in EVENTS]
    while len(history.items) < count:
        user_id, account_id, created = rng.choice(users)
        event = rng.choices(names, weights)[0]
        properties: Message = {"path": rng.choice(["/home", "/reports", "/dashboards", "/settings"])}
        if event == "report-exported":
            properties["format"] = rng.choice(["csv", "xlsx", "pdf"])
        if event == "search-performed":
            properties["results"] = rng.randrange(0, 50)
        message = {
            "type": "track",
            "userId": user_id,
            "accountId": account_id,
            "event": event,
            "properties": properties,
            "messageId": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        }
        history.add(history.between(created), message)
    del history.items[count:]
    return history.lines()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", "--count", type=int, default=3000)
    parser.add_argument("-o", "--output", type=Path, default=Path(__file__).with_name("events.jsonl"))
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args()
    lines = generate(args.count, args.seed)
    args.output.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    print(f"wrote {len(lines)} messages to {args.output}")


if __name__ == "__main__":
    main()
