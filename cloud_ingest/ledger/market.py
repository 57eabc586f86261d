"""The market's two rules, as pure functions: clearing a slot before delivery and settling it after.

Clearing (a uniform-price double auction, once per slot, before the slot begins):

1. offers in order of price, lowest first; bids in order of price, highest first; equal prices by arrival (the
   entry number);
2. walk both lists, pairing the current offer with the current bid for ``min`` of what either still has, while the
   bid's price is at least the offer's;
3. every pair trades at one price for the slot: the midpoint (rounded down to a whole yen per kWh) of the last
   paired offer's and bid's prices, so no seller gets less than asked and no buyer pays more than bid;
4. whatever stays unpaired expires with the slot (it is bought from or sold to the grid as usual).

Settling (after the slot ends, from both sides' metered values):

* per seller, its metered ``export`` for the slot; per buyer, its metered ``import``. Reports are taken until the
  slot is settled (by default 15 minutes after it ends); a side that has not reported by then counts 0, and a
  later report is refused (``slot_settled``);
* pairs in the clearing's order: delivered = ``min(paired Wh, seller's export not yet used, buyer's import not
  yet used)``;
* a delivered watt-hour is one token: minted from the grid-side ``delivery`` account to the seller, then moved
  from the seller to the buyer (two transfers, so every balance change is a double entry and the sum of all
  balances stays 0);
* a shortfall (the seller exported less, or the buyer took less, than paired) and any excess are settled with the
  grid at its own tariff, outside the ledger: no token is made for energy nobody metered on both sides.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["DELIVERY", "MatchPair", "Order", "clear", "settle"]

#: the grid-side account every token comes from: metered delivery mints from it (its balance is minus every token
#: ever delivered), and nothing ever goes back to it, so no token is ever destroyed
DELIVERY = "delivery"


@dataclass(frozen=True, slots=True)
class Order:
    """An offer or a bid as the market sees it: its entry number, account, watt-hours and limit price."""

    seq: int
    account: str
    wh: int
    price: int


@dataclass(frozen=True, slots=True)
class MatchPair:
    """Part of an offer paired with part of a bid."""

    offer: int
    bid: int
    seller: str
    buyer: str
    wh: int

    def to_json(self) -> dict[str, Any]:
        return {"offer": self.offer, "bid": self.bid, "seller": self.seller, "buyer": self.buyer, "wh": self.wh}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> MatchPair:
        return cls(int(doc["offer"]), int(doc["bid"]), str(doc["seller"]), str(doc["buyer"]), int(doc["wh"]))


def clear(offers: Sequence[Order], bids: Sequence[Order]) -> tuple[int | None, list[MatchPair]]:
    """The slot's clearing price (None: nothing traded) and its pairs, by the rule in the module docstring."""
    asks = sorted(offers, key=lambda o: (o.price, o.seq))
    wants = sorted(bids, key=lambda b: (-b.price, b.seq))
    pairs: list[MatchPair] = []
    i = j = 0
    left_o = asks[0].wh if asks else 0
    left_b = wants[0].wh if wants else 0
    last: tuple[int, int] | None = None
    while i < len(asks) and j < len(wants) and wants[j].price >= asks[i].price:
        o, b = asks[i], wants[j]
        if o.account == b.account:  # the store refuses both sides from one account; never pair it with itself
            j += 1
            left_b = wants[j].wh if j < len(wants) else 0
            continue
        q = min(left_o, left_b)
        pairs.append(MatchPair(o.seq, b.seq, o.account, b.account, q))
        last = (o.price, b.price)
        left_o -= q
        left_b -= q
        if left_o == 0:
            i += 1
            left_o = asks[i].wh if i < len(asks) else 0
        if left_b == 0:
            j += 1
            left_b = wants[j].wh if j < len(wants) else 0
    price = None if last is None else (last[0] + last[1]) // 2
    return price, pairs


def settle(pairs: Sequence[MatchPair], meters: Mapping[tuple[str, int, str], int], slot: int) -> list[list[Any]]:
    """The slot's token transfers ``[from, to, wh]`` from its pairs and the metered values
    ``{(account, slot, "export"|"import"): wh}``, by the rule in the module docstring."""
    export: dict[str, int] = {}
    imported: dict[str, int] = {}
    out: list[list[Any]] = []
    for p in pairs:
        e = export.setdefault(p.seller, meters.get((p.seller, slot, "export"), 0))
        m = imported.setdefault(p.buyer, meters.get((p.buyer, slot, "import"), 0))
        delivered = min(p.wh, e, m)
        if delivered <= 0:
            continue
        export[p.seller] = e - delivered
        imported[p.buyer] = m - delivered
        out.append([DELIVERY, p.seller, delivered])
        out.append([p.seller, p.buyer, delivered])
    return out
