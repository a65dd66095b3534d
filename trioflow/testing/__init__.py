"""Test kit: sources that record outcomes, and (see docs/testing.md) property-testing tools."""

from ._source import RecordingAcknowledger as RecordingAcknowledger
from ._source import TestSource as TestSource
