"""Chat completions through the gateway with the official openai SDK: streaming, a tool
definition, and temperature 0 compared with the model server called directly."""

from local_network import MODEL_ID

MESSAGES = [{"role": "user", "content": "Name three colors."}]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "City name"}},
            "required": ["city"],
        },
    },
}


def test_streaming_completion_arrives_in_chunks(client):
    stream = client.chat.completions.create(
        model=MODEL_ID, messages=MESSAGES, max_tokens=16, temperature=0, stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)

    content_chunks = [chunk for chunk in chunks if chunk.choices and chunk.choices[0].delta.content]
    assert len(content_chunks) > 1, chunks
    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    assert all(chunk.model == MODEL_ID for chunk in chunks)
    finish_reasons = [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices and chunk.choices[0].finish_reason]
    assert finish_reasons in (["stop"], ["length"]), chunks
    usage = [chunk.usage for chunk in chunks if chunk.usage is not None]
    assert len(usage) == 1, chunks
    assert usage[0].completion_tokens > 0
    assert usage[0].prompt_tokens > 0


def test_non_streaming_completion_with_tool(client, direct_client):
    request = dict(model=MODEL_ID, messages=[{"role": "user", "content": "What is the weather in Paris?"}],
                   tools=[WEATHER_TOOL], max_tokens=16, temperature=0)
    completion = client.chat.completions.create(**request)
    direct = direct_client.chat.completions.create(**request)
    without_tool = direct_client.chat.completions.create(**{**request, "tools": None})

    assert completion.object == "chat.completion"
    assert completion.model == MODEL_ID
    assert len(completion.choices) == 1
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.finish_reason in ("stop", "length", "tool_calls")
    assert choice.message.content or choice.message.tool_calls
    assert completion.usage.completion_tokens > 0
    # The tool definition reached the model: the test's chat template renders it into the prompt.
    assert completion.usage.prompt_tokens == direct.usage.prompt_tokens
    assert without_tool.usage.prompt_tokens < direct.usage.prompt_tokens
    assert choice.message.content == direct.choices[0].message.content


def test_temperature_zero_matches_model_server(client, direct_client):
    request = dict(model=MODEL_ID, messages=MESSAGES, max_tokens=16, temperature=0)
    direct = direct_client.chat.completions.create(**request).choices[0].message.content
    through_network = client.chat.completions.create(**request).choices[0].message.content
    stream = client.chat.completions.create(**request, stream=True)
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)

    assert direct
    assert through_network == direct
    assert streamed == direct
