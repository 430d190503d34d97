"""Model sanity: a broken reference (character tokenizer, scrambled weights) is refused before any suite runs.

The passing model is a tiny Llama trained here for a few seconds on the bundled sanity text (a model that
predicts it); the broken ones are that model with its tokenizer replaced by a character-level one, and with its
weights scrambled. Bounds are the module's own: nothing here is tuned to these models.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from pytest_qxai.models.sanity import PROMPT, SANITY_TEXT, SanityError, check_reference  # noqa: E402

SUITE = """
def test_uses_the_models(qxai_pair):
    assert qxai_pair.metadata["sanity"]

def test_again(qxai_pair):
    pass
"""


def _tokenizer(vocab: int) -> Any:
    """A byte-level BPE trained on the sanity text (``vocab`` = 259: no merges, one token per character)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    raw = Tokenizer(models.BPE(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    raw.train_from_iterator([SANITY_TEXT, PROMPT + " Paris."], trainer=trainer)
    return transformers.PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>", bos_token="<s>",
                                                eos_token="</s>", pad_token="</s>")


def _trained_model(folder: Path) -> Path:
    """A tiny Llama that has learned the sanity text (perplexity near 1 on it), saved with its tokenizer."""
    tokenizer = _tokenizer(420)
    config = transformers.LlamaConfig(vocab_size=420, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                      bos_token_id=1, eos_token_id=2, pad_token_id=2)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    ids = torch.tensor([[tokenizer.bos_token_id] + tokenizer(SANITY_TEXT)["input_ids"]])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(40):
        optimizer.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
    model.eval().save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The trained model, the same with a character-level tokenizer, and the same with scrambled weights."""
    root = tmp_path_factory.mktemp("sanity")
    good = _trained_model(root / "good")
    characters = root / "characters"
    model = transformers.AutoModelForCausalLM.from_pretrained(good)
    model.save_pretrained(characters, safe_serialization=True)
    _tokenizer(259).save_pretrained(characters)
    scrambled = root / "scrambled"
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():  # every weight keeps its values, in a random order
            flat = parameter.view(-1)
            flat.copy_(flat[torch.randperm(flat.numel(), generator=generator)])
    model.save_pretrained(scrambled, safe_serialization=True)
    transformers.AutoTokenizer.from_pretrained(good).save_pretrained(scrambled)
    return {"good": good, "characters": characters, "scrambled": scrambled}


def _runtime(folder: Path) -> Any:
    from pytest_qxai.models.loading import load_reference, load_tokenizer
    from pytest_qxai.runtime import Runtime

    tokenizer = load_tokenizer(folder, revision=None, trust_remote_code=False)
    model = load_reference(folder, device="cpu", dtype=torch.float32, revision=None, trust_remote_code=False)
    return Runtime(model, tokenizer, batch_size=4)


def test_a_model_that_predicts_english_passes_and_reports_its_figures(models: dict[str, Path]) -> None:
    figures = check_reference(_runtime(models["good"]))
    assert figures["perplexity"] < figures["perplexity_bound"] == pytest.approx(420 ** 0.5, abs=0.01)
    assert figures["tokens_per_word"] < 3 and figures["continuation"].strip()
    assert (figures["eos_token_id"], figures["pad_token_id"], figures["vocabulary"]) == (2, 2, 420)


def test_a_character_tokenizer_is_named(models: dict[str, Path]) -> None:
    words, characters = len(SANITY_TEXT.split()), len(SANITY_TEXT)  # one token per character, spaces too
    with pytest.raises(SanityError) as caught:
        check_reference(_runtime(models["characters"]), converted=True)
    assert str(caught.value) == (f"the converted tokenizer splits English into single characters: {characters} "
                                 f"tokens for {words} words (at most 3 per word expected)")


def test_scrambled_weights_fail_the_perplexity_bound(models: dict[str, Path]) -> None:
    with pytest.raises(SanityError, match=r"^the model does not predict English: perplexity [\d,]+ on the bundled "
                                          r"sentences, above the bound 20 \(the square root of its 420-token"):
        check_reference(_runtime(models["scrambled"]))


def test_missing_special_tokens_are_named(models: dict[str, Path]) -> None:
    runtime = _runtime(models["good"])
    runtime.tokenizer.eos_token = None
    with pytest.raises(SanityError, match="^the tokenizer has no end-of-sequence \\(EOS\\) token$"):
        check_reference(runtime)


@pytest.mark.parametrize(("broken", "xdist"), [("characters", ()), ("scrambled", ("-n", "2"))],
                         ids=["characters-no-xdist", "scrambled-xdist-n2"])
def test_a_broken_reference_stops_the_run_before_any_suite_with_one_line(
        pytester: pytest.Pytester, models: dict[str, Path], broken: str, xdist: tuple[str, ...]) -> None:
    pytester.makepyfile(test_suite=SUITE)
    run = pytester.runpytest_subprocess(f"--qxai-model={models[broken]}", "--quant=none", "--qxai-no-cache",
                                        "-p", "no:randomly", "-p", "no:cacheprovider", *xdist)
    assert run.ret == pytest.ExitCode.USAGE_ERROR, run.stdout.str()
    what = "splits English into single characters" if broken == "characters" else "does not predict English"
    lines = [line for line in run.stdout.lines if what in line]
    assert lines and all(line.count("qxai: the reference model") == 1 for line in lines), lines
    assert "Traceback" not in run.stdout.str() and "During handling" not in run.stdout.str()
    assert " passed" not in run.stdout.str()


def test_the_override_runs_the_suites_and_says_so(pytester: pytest.Pytester, models: dict[str, Path]) -> None:
    pytester.makepyfile(test_suite=SUITE)
    report = pytester.path / "report.json"
    run = pytester.runpytest_subprocess(f"--qxai-model={models['scrambled']}", "--quant=none", "--qxai-no-cache",
                                        "--qxai-skip-sanity", f"--qxai-report-json={report}", "-p", "no:randomly")
    run.assert_outcomes(passed=2)
    assert json.loads(report.read_text())["metadata"]["sanity"] == "skipped (--qxai-skip-sanity)"


def test_the_ini_twin_skips_too(pytester: pytest.Pytester) -> None:
    from pytest_qxai.options import QxaiConfig

    pytester.makeini("[pytest]\nqxai_skip_sanity = true\n")
    assert QxaiConfig.from_pytest(pytester.parseconfig()).skip_sanity


@pytest.mark.slow
def test_the_embedded_model_passes_with_room_to_spare() -> None:
    """SmolLM2-135M-Instruct: perplexity about 13 against a bound of 222 (docs/models.md)."""
    from test_arch import smollm2

    figures = check_reference(smollm2(), converted=True)
    assert figures["perplexity"] < figures["perplexity_bound"] / 5
    assert 1 <= figures["tokens_per_word"] <= 2
