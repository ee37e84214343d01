from __future__ import annotations

import json

from mercury.config import Config
from mercury.sandbox.contract import build_input, model_section

CHAIN = {
    "model": {
        "chain": [
            {"provider": "anthropic", "model": "a1"},
            {"provider": "openai", "model": "o1", "base_url": "http://127.0.0.1:11434/v1"},
            {"provider": "anthropic", "model": "a2"},
        ],
        "retries_per_leg": 3,
        "budget": "2m",
    }
}


def test_chain_order_and_limits_from_config() -> None:
    m = model_section(Config.model_validate(CHAIN)).to_dict()
    assert [leg["model"] for leg in m["chain"]] == ["a1", "o1", "a2"]
    assert m["chain"][1] == {"provider": "openai", "model": "o1"}
    assert (m["retries_per_leg"], m["budget_s"], m["max_turns"]) == (3, 120.0, 40)


def test_switched_leg_goes_first_and_the_rest_keep_their_order() -> None:
    m = model_section(Config.model_validate(CHAIN), "a2").to_dict()
    assert [leg["model"] for leg in m["chain"]] == ["a2", "a1", "o1"]
    assert [leg["model"] for leg in model_section(Config(), "unknown").to_dict()["chain"]] == [
        "claude-sonnet-4-5"
    ]


def test_ids_and_api_access_are_always_the_hosts() -> None:
    data = build_input(
        Config(),
        {"prompt": "hi", "run_id": "forged", "space_id": "other", "api": {"token": "stolen"}},
        run_id="r1",
        space_id="s1",
        token="t1",
    )
    assert (data["run_id"], data["space_id"]) == ("r1", "s1")
    assert data["api"] == {"socket": "/run/mercury-api/api.sock", "token": "t1"}
    assert data["prompt"] == "hi"


def test_legs_carry_only_provider_and_model_never_a_base_url_or_its_credentials() -> None:
    """A base_url with user:password in its user-info is the host's; the container sees
    nothing of it, in the model section or anywhere else in input.json."""
    config = Config.model_validate(
        {
            "model": {
                "chain": [
                    {
                        "provider": "openai",
                        "model": "gpt-x",
                        "base_url": "https://proxyuser:hunter2-pass@gw.example.com:8443/v1",
                    },
                    {"provider": "anthropic", "model": "claude-a", "base_url": "http://10.0.0.5"},
                ],
                "allowed": ["claude-haiku-4-5"],
            }
        }
    )
    section = model_section(config, "claude-a").to_dict()
    assert section["chain"] == [
        {"provider": "anthropic", "model": "claude-a"},
        {"provider": "openai", "model": "gpt-x"},
    ]
    built = json.dumps(build_input(config, {"prompt": "hi"}, run_id="r", space_id="s", token="t"))
    for leaked in ("hunter2-pass", "proxyuser", "gw.example.com", "10.0.0.5", "base_url"):
        assert leaked not in built


def test_an_operators_own_input_file_cannot_put_a_base_url_into_the_container() -> None:
    payload = {
        "prompt": "hi",
        "model": {
            "chain": [
                {"provider": "openai", "model": "o1", "base_url": "http://u:pw@10.0.0.5/v1"},
            ],
            "budget_s": 30,
        },
    }
    data = build_input(Config(), payload, run_id="r1", space_id="s1", token="t")
    assert data["model"] == {"chain": [{"provider": "openai", "model": "o1"}], "budget_s": 30}
    assert "pw@" not in json.dumps(data)
