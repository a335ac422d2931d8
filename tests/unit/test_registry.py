"""The provider registry is the one list of providers: the web's routes, the inbox, redaction,
reconciliation and the metrics know exactly its providers."""

from __future__ import annotations

import secrets as random
from typing import Literal

import pytest
from celery import Celery

from kc_tasks.core import metrics
from kc_tasks.core.settings import Settings
from kc_tasks.payments import inbox, reconciler, redaction
from kc_tasks.providers import Malformed, apis, registry
from kc_tasks.web import checkouts, create_app

NAMES = {"kc", "razorpay", "stripe", "reconcile"}


def app_paths(**secrets: str) -> set[str]:
    env = {"KC_WEBHOOK_SECRET": random.token_hex(32), "KC_DATABASE_URL": "postgresql+psycopg://127.0.0.1/unused"}
    app = create_app(Settings.from_env(env | secrets), Celery(broker="memory://"))
    return {path for path in app.openapi()["paths"] if path.startswith("/webhooks/")}


def test_every_provider_with_a_webhook_has_its_route_while_its_secret_is_set() -> None:
    env = {"KC_RAZORPAY_WEBHOOK_SECRET": random.token_hex(32), "KC_STRIPE_WEBHOOK_SECRET": random.token_hex(32)}
    assert (
        app_paths(**env)
        == {p.webhook.path for p in registry.WEBHOOKS if p.webhook}
        == {
            "/webhooks/payments",
            "/webhooks/razorpay",
            "/webhooks/stripe",
        }
    )
    assert app_paths() == {"/webhooks/payments"}


def test_the_inbox_redaction_and_reconciliation_know_exactly_the_registrys_providers() -> None:
    assert set(registry.NAMES) == NAMES
    assert set(inbox.PROVIDERS) == NAMES
    assert {key.split()[0] for key in redaction.KEPT} == NAMES
    assert set(reconciler.PROVIDERS) == set(reconciler.READERS) == {"razorpay", "stripe"}
    assert registry.METRIC_LABELS == metrics.Labels(webhooks=("kc", "razorpay", "stripe"), apis=("razorpay", "stripe"))


def test_an_unknown_provider_is_refused_and_a_reconciliation_event_has_its_sources_table() -> None:
    for provider in registry.PROVIDERS:
        assert registry.find(provider.name) is provider
    with pytest.raises(Malformed, match="unknown provider paypal"):
        inbox.parse("paypal", b"{}", "e")
    assert redaction.table_for("paypal", "e") == {}
    assert redaction.table_for("reconcile", "razorpay:pay_1:paid") == redaction.KEPT["reconcile razorpay"]
    assert redaction.table_for("reconcile", "razorpay:pay_1:bogus") == {}


def test_the_confirm_reads_back_exactly_the_checkouts_of_the_providers_that_declare_one() -> None:
    assert [p.name for p in registry.CONFIRMED] == ["razorpay", "stripe"]
    assert checkouts.BODIES == tuple(p.confirm.checkout for p in registry.CONFIRMED if p.confirm)
    for provider in registry.CONFIRMED:
        assert (
            provider.confirm and provider.confirm.checkout.model_fields["provider"].annotation == Literal[provider.name]
        )
    with pytest.raises(ValueError, match="read from its API"):
        registry.Provider("paypal", "PayPal", registry.STRIPE.parse, {}, (), confirm=registry.STRIPE.confirm)


@pytest.mark.parametrize(
    ("keys", "open_apis"),
    [
        ({}, set()),
        ({"KC_RAZORPAY_KEY_ID": "rzp_test_1"}, set()),
        ({"KC_RAZORPAY_KEY_ID": "rzp_test_1", "KC_RAZORPAY_KEY_SECRET": "s"}, {"razorpay"}),
        ({"KC_STRIPE_API_KEY": "sk_test_1"}, {"stripe"}),
    ],
)
def test_a_providers_api_is_opened_with_its_key_once_the_key_is_set(keys: dict[str, str], open_apis: set[str]) -> None:
    settings = Settings.from_env({"KC_DATABASE_URL": "postgresql+psycopg://127.0.0.1/unused"} | keys)
    accesses = [(p.name, p.api) for p in registry.PROVIDERS if p.api is not None]
    assert {name for name, access in accesses if access.configured(settings)} == open_apis
    for name, access in accesses:
        api = access.open(settings, 1.0, apis.no_retry)
        api.close()
        assert api.provider == name


def test_razorpays_webhook_secret_must_be_long_and_the_refusal_says_how_to_make_one() -> None:
    rules = {p.name: p.webhook.long_secret for p in registry.WEBHOOKS if p.webhook and p.webhook.long_secret}
    assert list(rules) == ["razorpay"]
    assert rules["razorpay"].problem("x" * 32 + ", " + "y" * 40, 32) is None
    assert rules["razorpay"].problem("x" * 40 + ",short", 32) == (
        "KC_RAZORPAY_WEBHOOK_SECRET is shorter than 32 characters; Razorpay's dashboard takes any text: generate one "
        'with python3 -c "import secrets; print(secrets.token_hex(32))" and paste it in both the webhook\'s Secret '
        "field and this variable"
    )
