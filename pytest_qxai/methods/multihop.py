"""Latent multi-hop reasoning (Yang et al., ACL 2024), per two-hop prompt, for both models.

A two-hop prompt ``r2(r1(e1))`` ("The capital city of the country where the Eiffel Tower is located is")
names the bridge entity ``e2`` (France) only through a descriptive mention. Per item:

* first hop: EntRec^l = the logit-lens log-probability of e2's first token at the mention's last token t,
  after decoder layer l; the item *wins* when EntRec on the real prompt exceeds EntRec on its negative. Yang et
  al. build two negatives, and so does this suite, each its own metric: ``first_hop`` substitutes e1 (another
  landmark, in another country), ``first_hop_r1`` substitutes r1 by a relation r1' of the same range applied to
  the same e1, so that the mention names an entity of the same type that is not e2 ("the mother of Paris
  Jackson" for "the father of Paris Jackson"). r1' must have r1's range: with another range ("the continent
  where ...") the mention's type word alone separates the prompts, and early layers "win" without resolving
  anything. The bundled relations offer such an r1' only for the person bridges (father and mother): no other
  relation maps a landmark, a city or a dish to a country, or a product to a company, and "the country where
  <landmark> originated" (``food_from_country``'s mention) still refers to e2. So ``first_hop_r1``'s units are the
  items of compositions whose first hop declares a ``substitute`` in the composition table, fixed by the data;
  the other items are not its units (NaN on both sides). Its precondition: the reference wins on significantly
  more than half of its units at its test layer (one-sided binomial test), else it is ``not applicable``;
* CnstScore = −½[H(p2, p1) + H(p1, p2)] between the next-token distributions of the two-hop prompt and of
  the one-hop prompt r2(e2);
* second hop: d CnstScore / dα at α = 0 when x^l_t ← x^l_t + α ∇EntRec^l (autograd), positive or not;
* greedy accuracy of r1(e1), r2(e2) and r2(r1(e1));
* ``worst_layer_entrec_shift``: the EntRec profile as a gated metric, the largest change over layers of the
  bridge entity's logit-lens probability exp(EntRec^l) (probabilities, so the noise of tiny early-layer
  log-probabilities does not dominate).

The test layer is chosen once, on the reference, from held-out items that are never gated (``SELECTION_ITEMS``),
so the gated items carry no winner's-curse bias towards the reference; the per-layer shares of all layers go
into the report as profiles (``first_hop_r1``'s layer on the held-out items that have a relation negative).
Compositions and templates: ``data/twohop/compositions.json``: 12 compositions bridging through a country, one
through a company (product → company → CEO) and four through a person (the father or mother of e1 → that
person's father or mother); one item per distinct r2(e2), so no two gated items are copies of one second hop.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ..datasets import DATA_DIR, Fact, dataset_fingerprint, load_relations, no_relations, seeded_order
from ..metrics import NOT_APPLICABLE, Metric, SuiteResult, not_applicable, register_metric
from ..profiles import suite_items
from ..storage import stable_hash
from ..suite import Suite, get_suite, register_suite
from .arch import ModelParts, model_parts
from .knowledge import first_token_ids, greedy_answers
from .outcomes import require_competence, worst_value

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

    from ..models.pair import ModelPair, ModelSide

SUITE = "multihop"
TWOHOP_PATH = DATA_DIR / "twohop" / "compositions.json"
SELECTION_ITEMS = 32
"""Held-out items on which the reference picks the test layers: every ``SELECTION_EVERY``-th item of the seeded
order is set aside, so they mix the compositions as the gated items do."""
SELECTION_EVERY = 5

FIRST_HOP = register_metric(Metric(
    SUITE, "first_hop", "EntRec of the bridge entity beats the e1-substituted negative at the test layer",
    "binary", bounds=(0.0, 1.0), unit="share", tolerance="abs:0.05",
))
CNST_SCORE = register_metric(Metric(
    SUITE, "cnst_score", "−½ symmetric cross-entropy of the two-hop and r2(e2) next-token distributions",
    "continuous", bounds=(None, 0.0), unit="nats", tolerance="abs:0.2",
))
FIRST_HOP_R1 = register_metric(Metric(
    SUITE, "first_hop_r1",
    "EntRec of the bridge entity beats the r1-substituted negative (same e1, another relation of the same range) "
    "at its test layer", "binary", bounds=(0.0, 1.0), unit="share", tolerance="abs:0.05",
))
"""Yang et al.'s relation-substitution test; its band is the entity-substitution test's."""
RELATION_TASK = "the r1-substituted first-hop test"
"""Its precondition: the reference beats the relation negative on more than half of the units (binomial test at
its test layer). SmolLM2-135M does not (0.3-0.6 at every layer on 40 person items): it does not tell "the father
of X" from "the mother of X" in its residual stream, and the metric would gate noise."""
SECOND_HOP = register_metric(Metric(
    SUITE, "second_hop", "raising EntRec at the test layer raises CnstScore (d CnstScore/dα > 0)",
    "binary", bounds=(0.0, 1.0), unit="share", tolerance="abs:0.05",
))
FIRST_HOP_ACCURACY = register_metric(Metric(
    SUITE, "first_hop_accuracy", "greedy answer to r1(e1) starts with the bridge entity",
    "binary", bounds=(0.0, 1.0), unit="share", tolerance="abs:0.03",
))
SECOND_HOP_ACCURACY = register_metric(Metric(
    SUITE, "second_hop_accuracy", "greedy answer to r2(e2) starts with the final answer",
    "binary", bounds=(0.0, 1.0), unit="share", tolerance="abs:0.03",
))
TWO_HOP_ACCURACY = register_metric(Metric(
    SUITE, "two_hop_accuracy", "greedy answer to r2(r1(e1)) starts with the final answer",
    "binary", bounds=(0.0, 1.0), unit="share", tolerance="abs:0.03",
))
WORST_LAYER = register_metric(Metric(
    SUITE, "worst_layer_entrec_shift",
    "largest change over layers of the logit-lens probability of the bridge entity, exp(EntRec^l) (FP side: 0)",
    "continuous", direction="lower", bounds=(0.0, 1.0), unit="probability", tolerance="abs:0.05",
))
"""The EntRec profile as a gated metric; its band is the first-hop test's (5 points)."""
MULTIHOP_METRICS = [FIRST_HOP, FIRST_HOP_R1, CNST_SCORE, SECOND_HOP,
                    FIRST_HOP_ACCURACY, SECOND_HOP_ACCURACY, TWO_HOP_ACCURACY, WORST_LAYER]


@dataclass(frozen=True)
class Prompt:
    """A two-hop prompt and the character offset where the descriptive mention of the bridge entity ends."""

    text: str
    mention_end: int


@dataclass(frozen=True)
class TwoHopItem:
    """One composed fact r2(r1(e1)) with its one-hop prompts and its e1- and r1-substituted negatives."""

    id: str
    composition: str
    bridge: Fact
    """The r1 fact: subject e1, object e2 (the bridge entity) and its aliases."""
    answer: Fact
    """The r2 fact: subject e2, object e3 (the final answer) and its aliases."""
    two_hop: Prompt
    negative: Prompt
    first_hop: str
    second_hop: str
    bridge_context: str
    """r2's prompt up to its subject slot: e2's first token is read as the continuation of this text."""
    relation_negative: Prompt | None = None
    """The mention with r1 replaced by r1's declared ``substitute`` (same range, same e1); None when r1 has none."""


def load_compositions() -> dict[str, Any]:
    """The bundled composition table (templates of each hop and the list of compositions)."""
    return json.loads(TWOHOP_PATH.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def build_items(table: dict[str, Any], relations: dict[str, Sequence[Fact]], seed: int) -> list[TwoHopItem]:
    """Every composable item, compositions taking turns in a seeded order (nested across prefixes).

    An item exists for each fact (e1, e2) of r1 whose object e2 is a subject of r2. Its entity negative
    substitutes the next e1' in the composition's seeded order whose bridge differs from e2; its relation
    negative, when r1 declares a ``substitute`` r1', is r1''s mention of the same e1. Items that share
    their one-hop prompt r2(e2) share their second-hop answer and CnstScore reference: only the first of them
    in the seeded order is kept, so the gate's items are independent.
    """
    items: list[TwoHopItem] = []
    for r1, r2 in table["compositions"]:
        hop1, hop2 = table["first_hops"][r1], table["second_hops"][r2]
        substitute = table["first_hops"][hop1["substitute"]]["mention"] if "substitute" in hop1 else None
        answers = {fact.subject: fact for fact in relations[r2]}
        pool = seeded_order([f for f in relations[r1] if f.object in answers], seed, key=lambda f: f.subject)
        prefix, _, _ = hop2["prompt"].partition("{}")

        def two_hop(mention: str, subject: str) -> Prompt:
            filled = mention.format(subject)
            return Prompt(hop2["prompt"].format(filled), len(prefix) + len(filled))

        for index, fact in enumerate(pool):
            others = pool[index + 1 :] + pool[:index]
            other = next((f for f in others if f.object not in fact.names), None)
            if other is None:
                continue
            items.append(TwoHopItem(
                id=f"{r1}>{r2}/{fact.subject}",
                composition=f"{r1}>{r2}",
                bridge=fact,
                answer=answers[fact.object],
                two_hop=two_hop(hop1["mention"], fact.subject),
                negative=two_hop(hop1["mention"], other.subject),
                first_hop=hop1["prompt"].format(fact.subject),
                second_hop=hop2["prompt"].format(fact.object),
                bridge_context=prefix.rstrip(),
                relation_negative=two_hop(substitute, fact.subject) if substitute else None,
            ))
    kept: dict[str, TwoHopItem] = {}
    for item in seeded_order(items, seed, key=lambda it: it.id, stratum=lambda it: it.composition):
        kept.setdefault(item.second_hop, item)  # the first in the order, at its own place (prefixes stay balanced)
    return list(kept.values())


def run_compositions(pair: "ModelPair") -> tuple[dict[str, Any], dict[str, Sequence[Fact]]]:
    """The composition table cut to the compositions whose two relations this run's relations hold (by key or name),
    and those relations' facts by table name (a user's ``lre=PATH`` may hold some, all or none of them)."""
    table = load_compositions()
    lookup = {}
    for relation in load_relations(path=pair.config.data.get("lre")):
        lookup[relation.name] = lookup[relation.key] = relation.samples
    usable = [[r1, r2] for r1, r2 in table["compositions"] if r1 in lookup and r2 in lookup]
    return {**table, "compositions": usable}, {name: lookup[name] for pair_ in usable for name in pair_}


def no_compositions(pair: "ModelPair") -> str:
    """Why no two-hop item can be composed from this run's relations (when :func:`run_compositions` keeps none)."""
    wanted = ", ".join(f"{r1}>{r2}" for r1, r2 in load_compositions()["compositions"])
    return (f"{NOT_APPLICABLE}the relations of this run ({pair.config.data.get('lre')}) hold no pair of relations "
            f"that the two-hop compositions chain (r1>r2, by relation key or name: {wanted})")


def twohop_items(pair: "ModelPair", n: int) -> tuple[list[TwoHopItem], list[TwoHopItem], dict[str, Any]]:
    """The ``n`` gated items, the held-out layer-selection items, and the composition table."""
    table, relations = run_compositions(pair)
    items = build_items(table, relations, pair.config.seed)
    held = SELECTION_EVERY - 1
    gated = [it for index, it in enumerate(items) if index % SELECTION_EVERY != held]
    return gated[:n], items[held::SELECTION_EVERY][:SELECTION_ITEMS], table


def mention_positions(tokenizer: "PreTrainedTokenizerBase", prompts: Sequence[Prompt]) -> list[int]:
    """Index of the token holding each mention's last character (offsets of the prompt's own tokenization)."""
    encoded = tokenizer([p.text for p in prompts], return_offsets_mapping=True)
    positions = []
    for prompt, offsets in zip(prompts, encoded["offset_mapping"]):
        inside = [i for i, (start, end) in enumerate(offsets) if end > start and start < prompt.mention_end]
        positions.append(inside[-1])
    return positions


def cnst_score(logp_two_hop: np.ndarray, logp_one_hop: np.ndarray) -> np.ndarray:
    """CnstScore = −½[H(p2, p1) + H(p1, p2)], H(p, q) = −Σ p log q, per row (Yang et al. 2024, Eq. 3).

    A token of probability 0 adds 0 (``0 log 0 = 0``). A row that is no distribution (NaN, as from a broken quantized
    model) scores −inf, the worst value."""
    p2, p1 = np.exp(logp_two_hop), np.exp(logp_one_hop)
    with np.errstate(invalid="ignore"):
        score = 0.5 * (np.where(p2 > 0, p2 * logp_one_hop, 0.0).sum(-1)
                       + np.where(p1 > 0, p1 * logp_two_hop, 0.0).sum(-1))
    return np.where(np.isnan(logp_two_hop).any(-1) | np.isnan(logp_one_hop).any(-1), -np.inf, score)


def cnst_objective(logp_one_hop: "torch.Tensor") -> Any:
    """CnstScore of each two-hop row against its fixed one-hop distribution, as a differentiable objective."""

    def objective(logp: "torch.Tensor", rows: list[int]) -> "torch.Tensor":
        fixed = logp_one_hop[rows].to(logp.device)
        return 0.5 * ((logp.exp() * fixed).sum(-1) + (fixed.exp() * logp).sum(-1))

    return objective


def entrec(parts: ModelParts, states: np.ndarray, tokens: Sequence[int]) -> np.ndarray:
    """EntRec^l of each item's bridge token from decoder-layer outputs ``[n, L, d]`` → ``[n, L]`` (logit lens)."""
    import torch

    n, depth, width = states.shape
    rows = torch.from_numpy(np.ascontiguousarray(states, dtype=np.float32)).reshape(-1, width)
    with torch.no_grad():
        found = parts.token_log_probs(rows, torch.tensor(tokens, dtype=torch.long).repeat_interleave(depth))
    return found.reshape(n, depth).double().numpy()


def second_hop_derivatives(
    parts: ModelParts, states: np.ndarray, grads: np.ndarray, tokens: Sequence[int],
) -> tuple[np.ndarray, np.ndarray]:
    """EntRec ``[n, L]`` and d CnstScore/dα ``[n, L]`` for the patch x^l_t ← x^l_t + α ∇EntRec^l.

    ``grads`` ``[n, L, d]`` holds d CnstScore / d x^l_t, so the derivative is its dot product with ∇EntRec^l.
    """
    import torch

    n, depth, width = states.shape
    rows = torch.from_numpy(np.ascontiguousarray(states, dtype=np.float32)).reshape(-1, width)
    values, direction = parts.token_log_probs_and_grads(
        rows, torch.tensor(tokens, dtype=torch.long).repeat_interleave(depth))
    slopes = (torch.from_numpy(grads).double().reshape(-1, width) * direction.double()).sum(-1)
    return values.reshape(n, depth).double().numpy(), slopes.reshape(n, depth).numpy()


def latent_values(pair: "ModelPair", side: "ModelSide", items: Sequence[TwoHopItem]) -> dict[str, np.ndarray]:
    """EntRec ``[n, L]`` of the real prompts and of both negatives (NaN rows: no relation negative), and
    d CnstScore/dα per layer (when backward works).

    With backward, the layer outputs of the real prompts come from the same pass as the CnstScore gradients.
    """
    import torch

    def measure(items: Sequence[TwoHopItem]) -> dict[str, np.ndarray]:
        runtime, tokenizer, n = side.runtime, side.runtime.tokenizer, len(items)
        parts = model_parts(side.model)
        with_r1 = [i for i, it in enumerate(items) if it.relation_negative is not None]
        negatives = [it.negative for it in items] + [items[i].relation_negative for i in with_r1]
        positions = mention_positions(tokenizer, [it.two_hop for it in items] + negatives)  # type: ignore[list-item]
        bridge = first_token_ids(tokenizer, [it.bridge_context for it in items], [it.bridge.object for it in items])
        values: dict[str, np.ndarray] = {}
        texts = [p.text for p in negatives]  # type: ignore[union-attr]
        if side.backward_ok()[0]:
            one_hop = torch.from_numpy(runtime.next_token_logprobs([it.second_hop for it in items]))
            states, grads = runtime.output_gradients([it.two_hop.text for it in items],
                                                     [layer.block for layer in parts.layers],
                                                     positions[:n], cnst_objective(one_hop))
            values["real"], values["dcnst"] = second_hop_derivatives(parts, states, grads, bridge)
            hidden = runtime.hidden_states(texts, positions[n:])[:, 1:]
        else:
            both = runtime.hidden_states([it.two_hop.text for it in items] + texts, positions)[:, 1:]
            values["real"], hidden = entrec(parts, both[:n], bridge), both[n:]
        found = entrec(parts, hidden, bridge + [bridge[i] for i in with_r1])
        values["negative"] = found[:n]
        values["relation_negative"] = np.full_like(values["real"], np.nan)
        values["relation_negative"][with_r1] = found[n:]
        return values

    return pair.cached_batches(side, "multihop.latent", len(items), get_suite(SUITE).look_items(pair.config),
                               lambda start, stop: _params(items[start:stop]),
                               lambda start, stop: measure(items[start:stop]))


def behaviour_values(pair: "ModelPair", side: "ModelSide", items: Sequence[TwoHopItem]) -> dict[str, np.ndarray]:
    """CnstScore and the three greedy accuracies of one model."""

    def measure(items: Sequence[TwoHopItem]) -> dict[str, np.ndarray]:
        n = len(items)
        correct, first = greedy_answers(
            side.runtime,
            [it.first_hop for it in items] + [it.second_hop for it in items] + [it.two_hop.text for it in items],
            [it.bridge.names for it in items] + [it.answer.names for it in items] * 2,
        )
        return {
            CNST_SCORE.name: cnst_score(first[2 * n :].astype(np.float64), first[n : 2 * n].astype(np.float64)),
            FIRST_HOP_ACCURACY.name: correct[:n],
            SECOND_HOP_ACCURACY.name: correct[n : 2 * n],
            TWO_HOP_ACCURACY.name: correct[2 * n :],
        }

    return pair.cached_batches(side, "multihop.behaviour", len(items), get_suite(SUITE).look_items(pair.config),
                               lambda start, stop: _params(items[start:stop]),
                               lambda start, stop: measure(items[start:stop]))


def _params(items: Sequence[TwoHopItem]) -> dict[str, str]:
    """What a side's per-item multi-hop values depend on besides the model: the items and the composition table."""
    return {"items": _fingerprint(items), "table": load_compositions()["version"]}


def best_layer(outcomes: np.ndarray) -> int:
    """The layer (0-based index over decoder layers) where the share of positive outcomes is highest (NaN rows:
    not units)."""
    return int(np.argmax(np.nanmean(outcomes, axis=0)))


def relation_test(values: dict[str, np.ndarray]) -> np.ndarray:
    """``[n, L]`` outcomes of the r1-substitution test: 1 where EntRec beats the relation negative, NaN without one."""
    return np.where(np.isnan(values["relation_negative"]), np.nan, values["real"] > values["relation_negative"])


def run_multihop(pair: "ModelPair") -> SuiteResult:
    """First-hop and second-hop tests, consistency and accuracies of both models on the same two-hop items."""
    reason = no_relations(pair.config.data)
    if reason:
        return not_applicable(SUITE, MULTIHOP_METRICS, reason)
    items, selection, table = twohop_items(pair, suite_items(SUITE, pair.config))
    if not table["compositions"]:
        return not_applicable(SUITE, MULTIHOP_METRICS, no_compositions(pair))
    reference = {**latent_values(pair, pair.reference, items), **behaviour_values(pair, pair.reference, items)}
    quantized = {**latent_values(pair, pair.quantized, items), **behaviour_values(pair, pair.quantized, items)}
    held_out = latent_values(pair, pair.reference, selection) if selection else None
    ref_vals: dict[str, np.ndarray] = {}
    quant_vals: dict[str, np.ndarray] = {}
    profiles: dict[str, dict[str, list[float]]] = {}
    layers: dict[str, int] = {}
    skipped: dict[str, str] = {}
    tests: dict[str, Any] = {FIRST_HOP.name: lambda v: (v["real"] > v["negative"]).astype(float),
                             FIRST_HOP_R1.name: relation_test}
    ok_ref, why_ref = pair.reference.backward_ok()
    ok_quant, why_quant = pair.quantized.backward_ok()
    if ok_ref and ok_quant:
        tests[SECOND_HOP.name] = lambda v: (v["dcnst"] > 0).astype(float)
    else:
        side, why = ("reference", why_ref) if not ok_ref else ("quantized", why_quant)
        skipped[SECOND_HOP.name] = (f"{NOT_APPLICABLE}the second-hop test differentiates CnstScore through the model and the {side} "
                                    f"model has no backward pass here ({why})")
    if all(it.relation_negative is None for it in items):
        del tests[FIRST_HOP_R1.name]
        skipped[FIRST_HOP_R1.name] = ("not applicable: no gated item's composition has a relation of the same range "
                                      "to substitute for r1 (the composition table's 'substitute')")
    for name, test in tests.items():
        ref_out, quant_out = test(reference), test(quantized)
        selection_out = test(held_out) if held_out else None
        usable = selection_out is not None and not np.isnan(selection_out).all()
        layers[name] = best_layer(selection_out if usable else ref_out)
        ref_vals[name], quant_vals[name] = ref_out[:, layers[name]], quant_out[:, layers[name]]
        profiles[f"{name}/share_by_layer"] = {"reference": np.nanmean(ref_out, axis=0).tolist(),
                                              "quantized": np.nanmean(quant_out, axis=0).tolist()}
    profiles[f"{FIRST_HOP.name}/entrec_by_layer"] = {
        "reference": reference["real"].mean(0).tolist(), "quantized": quantized["real"].mean(0).tolist()}
    ref_vals[WORST_LAYER.name] = np.zeros(len(items))
    shift = np.abs(np.exp(quantized["real"]) - np.exp(reference["real"]))
    quant_vals[WORST_LAYER.name] = np.where(np.isnan(shift), worst_value(WORST_LAYER), shift).max(axis=1)
    for metric in (CNST_SCORE, FIRST_HOP_ACCURACY, SECOND_HOP_ACCURACY, TWO_HOP_ACCURACY):
        ref_vals[metric.name], quant_vals[metric.name] = reference[metric.name], quantized[metric.name]
    counts: dict[str, int] = {}
    for it in items:
        counts[it.composition] = counts.get(it.composition, 0) + 1
    result = SuiteResult(
        suite=SUITE,
        item_ids=[it.id for it in items],
        reference=ref_vals,
        quantized=quant_vals,
        fingerprint={"items": _fingerprint(items), "selection": _fingerprint(selection),
                     "compositions": stable_hash(table)},
        profiles=profiles,
        skipped=skipped,
        notes={
            "compositions_version": table["version"],
            "items_per_composition": counts,
            "test_layers": {name: index + 1 for name, index in layers.items()},
            "test_layer_selection": (f"layer with the highest share on the reference over {len(selection)} held-out "
                                     "items that are not gated" if selection else
                                     "no held-out items left: layer chosen on the gated reference items"),
            "entrec_token": "first token of the bridge entity, read as the continuation of r2's prompt prefix",
            "relation_negatives": {
                "gated_units": sum(it.relation_negative is not None for it in items),
                "held_out_units": sum(it.relation_negative is not None for it in selection),
                "substitutes": {r1: hop["substitute"] for r1, hop in table["first_hops"].items() if "substitute" in hop},
            },
        },
    )
    if FIRST_HOP_R1.name in ref_vals:
        units = ref_vals[FIRST_HOP_R1.name][~np.isnan(ref_vals[FIRST_HOP_R1.name])]
        require_competence(result, RELATION_TASK, units, 0.5, [FIRST_HOP_R1])
    return result


def _fingerprint(items: Sequence[TwoHopItem]) -> str:
    """Hash of the items' prompts and facts (the item dataclasses hold everything that enters a result)."""
    return dataset_fingerprint(list(items))


MULTIHOP_SUITE = register_suite(Suite(
    SUITE,
    "Latent multi-hop reasoning (Yang et al. 2024): first-hop EntRec tests, CnstScore, second hop, accuracies.",
    tuple(MULTIHOP_METRICS), run_multihop,
    sizes={"smoke": 24, "standard": 150, "full": 500}, item_cost=1.6,
))
