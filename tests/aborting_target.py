"""The registry entry of tests.fake_target.AbortingTarget (a target module defines TARGET)."""

from tests.fake_target import AbortingTarget

TARGET = AbortingTarget()
