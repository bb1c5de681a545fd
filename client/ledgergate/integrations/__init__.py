"""Drop-in gating for the calls people already make. Each module needs its framework installed (the
package's extras: `pip install 'ledgergate[openai]'`, `[langchain]`, `[litellm]`); this package itself
imports none of them.

- ledgergate.integrations.openai: wrap an `openai.OpenAI` / `AsyncOpenAI` client (`gated`).
- ledgergate.integrations.langchain: a LangChain callback handler (`GateCallbackHandler`, and an async one).
- ledgergate.integrations.litellm: a LiteLLM `CustomLogger` (`GateLogger`) and its sync `completion`.
- ledgergate.integrations.wire: OpenAI's wire format <-> the gate's records (messages, usage).
"""
