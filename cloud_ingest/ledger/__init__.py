"""The city's energy-trading ledger (issue 18 section 2): kWh tokens for neighbour-to-neighbour trades.

Who takes part: only households that granted the ``energy-trading`` purpose. A household's gateway enrolls once
with a message signed by its enrolled key and carrying its signed consent record; the ledger then knows the
household only as its energy-trading pseudonym (``account``) and a trading key derived for that purpose alone
(:meth:`kyojo.keys.GatewayKeys.purpose_signing_key`), never the gateway or household id.

What happens (``market``: the rules; ``store``: PostgreSQL; ``service``: intake and the matcher's tick):

1. offers (a household's forecast surplus for a future 30-minute slot) and bids arrive signed by their account;
2. a few minutes before a slot begins the matcher clears it: a uniform-price double auction (``market.clear``);
3. after the slot both sides report their metered export/import, signed; the matcher settles: delivered =
   min(paired, export, import); each delivered Wh is a token minted from the grid-side ``delivery`` account to the
   seller and moved to the buyer; the rest is settled with the grid, not in tokens (``market.settle``);
4. after a settlement the city signs a checkpoint: the head hash and every balance.

The ledger (``chain``): append-only, every entry signed by its maker (households: their trading key; the city:
its ledger key, whose certificate the city CA issued with the role ``ledger``), hash-chained, checkpointed, and
checked offline by ``kyojo ledger verify`` (signatures, chain, replays, the clearing and settlement rules, double
entry: tokens only minted by metered delivery, never destroyed, balances summing to zero).

What ``verify`` cannot see, by design: the link from an account to its gateway (the city checked the enrollment,
signed by the gateway's enrolled key, but keeps it off the ledger so that the ledger stays pseudonymous), so an
account the city itself made up would look like any other (it could never act for an existing account, and any
tokens it got would still need meter reports signed by that account's key); messages the city never appended
(a household keeps its own copies: ``kyojo audit show``); and entries cut off after the last checkpoint unless the
verifier names a head it saw before (``--head``). Meters are trusted as their own households report them; the
``min`` of both sides bounds what one side alone can claim.
"""
