"""Content the conformance suite reads back: tools returning each content type, resources, prompts."""

import base64
import json

from mcp.types import AudioContent, EmbeddedResource, ImageContent, TextContent, TextResourceContents

from mesh import ToolKit

kit = ToolKit("content")

IMAGE = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="
AUDIO = "UklGRiYAAABXQVZFZm10IBAAAAABAAEAQB8AAAB9AAACABAAZGF0YQIAAAA="


def _image() -> ImageContent:
    return ImageContent(type="image", data=IMAGE, mime_type="image/png")


@kit.tool
def test_simple_text() -> str:
    """Tests simple text content response."""
    return "This is a simple text response for testing."


@kit.tool
def test_image_content() -> list[ImageContent]:
    """Tests image content response."""
    return [_image()]


@kit.tool
def test_audio_content() -> list[AudioContent]:
    """Tests audio content response."""
    return [AudioContent(type="audio", data=AUDIO, mime_type="audio/wav")]


@kit.tool
def test_embedded_resource() -> list[EmbeddedResource]:
    """Tests embedded resource content response."""
    text = TextResourceContents(uri="test://embedded-resource", mime_type="text/plain",
                                text="This is an embedded resource content.")
    return [EmbeddedResource(type="resource", resource=text)]


@kit.tool
def test_multiple_content_types() -> list[TextContent | ImageContent | EmbeddedResource]:
    """Tests response with multiple content types (text, image, resource)."""
    data = TextResourceContents(uri="test://mixed-content-resource", mime_type="application/json",
                                text='{"test": "data", "value": 123}')
    return [TextContent(type="text", text="Multiple content types test:"), _image(),
            EmbeddedResource(type="resource", resource=data)]


@kit.tool
def test_error_handling() -> str:
    """Tests error response handling."""
    raise ValueError("This tool intentionally returns an error for testing")


@kit.resource("test://static-text", name="static-text", mime_type="text/plain")
def static_text() -> str:
    """A static text resource for testing."""
    return "This is the content of the static text resource."


@kit.resource("test://static-binary", name="static-binary", mime_type="image/png")
def static_binary() -> bytes:
    """A static binary resource (image) for testing."""
    return base64.b64decode(IMAGE)


@kit.resource("test://template/{id}/data", name="template-data", mime_type="application/json")
def template_data(id: str) -> str:
    """A resource template with parameter substitution."""
    return json.dumps({"id": id, "templateTest": True, "data": f"Data for ID: {id}"})


@kit.resource("test://watched-resource", name="watched-resource", mime_type="text/plain")
def watched_resource() -> str:
    """A resource that can be subscribed to for updates."""
    return "Watched resource content"


@kit.prompt
def test_simple_prompt() -> str:
    """A simple prompt without arguments."""
    return "This is a simple prompt for testing."


@kit.prompt
def test_prompt_with_arguments(arg1: str, arg2: str) -> str:
    """A prompt with required arguments."""
    return f"Prompt with arguments: arg1='{arg1}', arg2='{arg2}'"


@kit.prompt
def test_prompt_with_embedded_resource(resourceUri: str) -> list:
    """A prompt that includes an embedded resource."""
    text = TextResourceContents(uri=resourceUri, mime_type="text/plain", text="Embedded resource content for testing.")
    return [EmbeddedResource(type="resource", resource=text), "Please process the embedded resource above."]


@kit.prompt
def test_prompt_with_image() -> list:
    """A prompt that includes image content."""
    return [_image(), "Please analyze the image above."]
