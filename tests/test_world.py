"""Tests of the synthetic world: rendering invariants, ground truth, captions, parser, splits, files, CLI."""

import argparse
import json

import numpy as np
import pytest
import torch

from selfforcing.world import (
    BACKGROUNDS, COLOURS, MOTIONS, PALETTE, SHAPES, SIZES, SPEEDS, Scene, WorldDataConfig, WorldDataset,
    WorldObject, collate_world, detailed_caption, extend_prompt, heldout_prompts, heldout_scenes, is_heldout,
    object_state, parse_prompt, read_clips, render, render_tensor, sample_scene, scene_from_prompt,
    short_caption, split_key, to_tensor, to_uint8, train_scenes, write_clips,
)
from selfforcing.world import cli, renderer, vocab
from selfforcing.world.prompts import (
    HELDOUT_COLOUR_WORDS, SHAPE_SYNONYMS, TRAINING_COLOUR_WORDS, vary_colour_words,
)
from selfforcing.world.renderer import background_image
from selfforcing.world.scene import _extent, place_object


def scenes(n, seed=0, **kw):
    rng = np.random.default_rng(seed)
    return [sample_scene(rng, **kw) for _ in range(n)]


def every_motion_scene(rng):
    """One single-object scene per (shape, motion), on black, at random sizes and speeds."""
    out = []
    for shape in SHAPES:
        for motion in MOTIONS:
            size, speed = SIZES[rng.integers(3)], SPEEDS[rng.integers(3)]
            out.append(Scene((place_object(rng, shape, "white", size, motion, speed),), "black"))
    return out


def attributes(parsed_or_scene):
    return tuple((o.shape, o.colour, o.size, o.motion, o.speed) for o in parsed_or_scene.objects)


def object_mask(frame, colour, tol=60):
    """Pixels within `tol` RGB units of an object's colour: (H, W) bool."""
    return np.linalg.norm(frame.astype(float) - PALETTE[colour], axis=-1) < tol


# --- rendering -----------------------------------------------------------------------------------------------
def test_determinism_from_seed():
    a, b, c = scenes(8, seed=3), scenes(8, seed=3), scenes(8, seed=4)
    assert a == b and a != c
    for s, t in zip(a, b):
        assert np.array_equal(render(s, 0, 9), render(t, 0, 9))
    assert render(a[0]).shape == (vocab.CLIP_FRAMES, 64, 64, 3) and render(a[0]).dtype == np.uint8
    assert render(a[0], 0, 2, size=32).shape == (2, 32, 32, 3)


def test_render_from_any_start_equals_slice_of_longer_render():
    rng = np.random.default_rng(0)
    for scene in every_motion_scene(rng) + scenes(10, seed=1):
        full = render(scene, 0, 48)
        for start in (1, 33):
            assert np.array_equal(render(scene, start, 48 - start), full[start:]), scene
        assert np.array_equal(render(scene, 5000, 4)[1:], render(scene, 5001, 3))


def test_pixel_window_changes_nothing(monkeypatch):
    rng = np.random.default_rng(11)
    clips = every_motion_scene(rng) + scenes(10, seed=12)
    windowed = [render(s, 3, 20, size=48) for s in clips]
    monkeypatch.setattr(renderer, "_window", lambda centre, reach, size, wrap: slice(0, size))
    for scene, video in zip(clips, windowed):
        assert np.array_equal(render(scene, 3, 20, size=48), video), scene


def test_objects_stay_in_frame_forever():
    rng = np.random.default_rng(1)
    late = 10_000
    for scene in every_motion_scene(rng):
        obj = scene.objects[0]
        state = object_state(obj, late, 32)
        if obj.motion in vocab.DIRECTIONS:                   # wraps: centre on the torus, area conserved
            assert np.all((state.x >= 0) & (state.x < 1) & (state.y >= 0) & (state.y < 1))
            # White on black: total intensity is the covered area, even when split across edges.
            area_0, area_late = int(render(scene, 0, 1).sum()), int(render(scene, late, 1).sum())
            assert abs(area_late - area_0) <= 0.05 * area_0, (obj, area_0, area_late)
        else:                                                # fully inside at every frame
            left, right, top, bottom = _extent(obj.shape, vocab.SIZE_RADIUS[obj.size], obj.motion)
            eps = 1e-9
            assert np.all(state.x - left >= -eps) and np.all(state.x + right <= 1 + eps), obj
            assert np.all(state.y - top >= -eps) and np.all(state.y + bottom <= 1 + eps), obj
            if obj.motion == "orbit":
                assert np.all(np.hypot(state.x - obj.x, state.y - obj.y) + vocab.SIZE_RADIUS[obj.size] <= 1)
        assert object_mask(render(scene, late, 1)[0], "white").sum() > 10


def test_ground_truth_centre_matches_rendered_centroid():
    rng = np.random.default_rng(2)
    size = 64
    for scene in every_motion_scene(rng):
        obj = scene.objects[0]
        if obj.motion in vocab.DIRECTIONS or obj.shape == "triangle" and obj.motion == "spin":
            continue                                          # split across edges / AA-skewed; checked above
        frames = render(scene, 100, 4, size=size)
        state = object_state(obj, 100, 4)
        for f in range(4):
            weight = frames[f].astype(float).mean(-1) / 245.0  # white on black: intensity = coverage
            ys, xs = np.mgrid[:size, :size] + 0.5
            cx, cy = (weight * xs).sum() / weight.sum(), (weight * ys).sum() / weight.sum()
            assert abs(cx - state.x[f] * size) < 0.6 and abs(cy - state.y[f] * size) < 0.6, obj


def test_palette_is_distinct_from_every_background_and_itself():
    for name in BACKGROUNDS:
        pixels = background_image(name, 64).reshape(-1, 3) * 255
        for colour, rgb in PALETTE.items():
            margin = np.linalg.norm(pixels - np.array(rgb), axis=-1).min()
            assert margin > 150, (name, colour, margin)
    rgb = np.array(list(PALETTE.values()), dtype=float)
    pairwise = np.linalg.norm(rgb[:, None] - rgb[None], axis=-1) + 1e3 * np.eye(len(rgb))
    assert pairwise.min() > 100
    assert len(COLOURS) >= 8 and len(SHAPES) >= 4 and len(MOTIONS) >= 8 and len(BACKGROUNDS) >= 4


def test_tensor_helpers_round_trip():
    scene = scenes(1)[0]
    video = render(scene, 0, 5)
    x = render_tensor(scene, 0, 5)
    assert x.shape == (5, 3, 64, 64) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    assert torch.equal(x, to_tensor(video)) and np.array_equal(to_uint8(x), video)


# --- scenes, captions, prompts ---------------------------------------------------------------------------
def test_scene_dict_round_trip_and_validation():
    for scene in scenes(20, seed=5):
        assert Scene.from_dict(json.loads(json.dumps(scene.to_dict()))) == scene
        assert 1 <= len(scene.objects) <= 3
        assert len({o.colour for o in scene.objects}) == len(scene.objects)
    assert all(len(s.objects) <= 2 for s in scenes(20, max_objects=2))
    with pytest.raises(ValueError, match="colour"):
        WorldObject("circle", "black", "small", "spin", "slow")
    with pytest.raises(ValueError, match="background"):
        Scene((WorldObject("circle", "red", "small", "left", "slow"),), "plaid")


def test_captions_mention_the_right_attributes():
    for scene in scenes(300, seed=6):
        short, detailed = short_caption(scene), detailed_caption(scene)
        assert short == short_caption(scene) and detailed == detailed_caption(scene)
        for obj in scene.objects:
            assert obj.colour in short and obj.colour in detailed
        assert short.count(" and a") + short.count(" and an") >= len(scene.objects) - 1
        assert detailed.endswith(".") and detailed[0].isupper()
        # The parser recovers everything each caption says.
        assert attributes(parse_prompt(detailed)) == attributes(scene)
        assert parse_prompt(detailed).background == scene.background
        found = parse_prompt(short)
        assert [(o.shape, o.colour, o.motion) for o in found.objects] == \
               [(o.shape, o.colour, o.motion) for o in scene.objects]
        for v in range(4):                                   # every phrasing variant parses back too
            assert attributes(parse_prompt(detailed_caption(scene, v))) == attributes(scene)
    scene = Scene((WorldObject("circle", "red", "small", "right", "fast"),), "gradient")
    text = detailed_caption(scene, 0).lower()
    assert "red" in text and "gradient" in text and any(w in text for w in ("small", "tiny", "little"))
    assert any(w in text for w in ("quickly", "rapidly", "swiftly")) and "right" in text


def test_colour_synonyms_keep_meaning_and_leave_heldout_words_out():
    rng = np.random.default_rng(0)
    used = set()
    for scene in scenes(200, seed=8):
        for caption in (short_caption(scene), detailed_caption(scene)):
            assert vary_colour_words(caption, rng, 0.0) == caption
            varied = vary_colour_words(caption, rng, 1.0)
            words = set(varied.lower().replace(",", " ").replace(".", " ").split())
            assert not words & HELDOUT_COLOUR_WORDS
            tokens = varied.lower().replace("-", " ").split()
            assert not any(a in COLOURS and b.strip(".,") in SHAPE_SYNONYMS   # every object's name replaced
                           for a, b in zip(tokens, tokens[1:]))
            used |= words & {w for ws in TRAINING_COLOUR_WORDS.values() for w in ws}
            # the parser reads the same objects (the synonyms are its own) and the same background
            parsed, original = parse_prompt(varied), parse_prompt(caption)
            assert [(o.shape, o.colour) for o in parsed.objects] == [(o.shape, o.colour) for o in original.objects]
            assert parsed.background == original.background
    assert len(used) > 10
    background = "a red circle moves right on a plain dark blue background"
    assert vary_colour_words(background, rng, 1.0).endswith("dark blue background")
    assert all(TRAINING_COLOUR_WORDS[c] for c in COLOURS)


def test_extender_round_trip_fills_defaults():
    for scene in scenes(200, seed=7):
        short = short_caption(scene)
        extended = extend_prompt(short)
        assert extended == extend_prompt(short) and extended != short
        parsed = parse_prompt(extended)
        assert [(o.shape, o.colour, o.motion) for o in parsed.objects] == \
               [(o.shape, o.colour, o.motion) for o in scene.objects]
        assert all(o.size == "medium" and o.speed == "normal" for o in parsed.objects)
        assert parsed.background == "black"
    for text in ("", "hello world", "a photo of a cat", "the background is plain grey"):
        assert extend_prompt(text) == text


@pytest.mark.parametrize("text, expected, background", [
    ("a crimson ball drifting to the left quickly", [("circle", "red", None, "left", "fast")], None),
    ("big box going from left to right slowly", [("square", None, "large", "right", "slow")], None),
    ("a tiny emerald disk moves in a circle on a checkered backdrop",
     [("circle", "green", "small", "orbit", None)], "checker"),
    ("a golden pyramid ricochets around at high speed", [("triangle", "yellow", None, "bounce", "fast")], None),
    ("pink donut rotating, teal rhombus grows and shrinks",
     [("ring", "magenta", None, "spin", None), ("diamond", "cyan", None, "pulse", None)], None),
    ("an amber cross rises toward the upper left over a dark blue background",
     [("cross", "orange", None, "up_left", None)], "navy"),
    ("something white sinking gently, striped background", [(None, "white", None, "down", "slow")], "stripes"),
    ("A medium-sized blue cube moves at a moderate pace diagonally. The background is plain grey.",
     [("square", "blue", "medium", "down_right", "normal")], "grey"),
    ("a scarlet hoop orbiting rapidly on a vertical gradient", [("ring", "red", None, "orbit", "fast")], "gradient"),
])
def test_synonyms_parse(text, expected, background):
    parsed = parse_prompt(text)
    assert attributes(parsed) == tuple(expected) and parsed.background == background


def test_scene_from_prompt_fills_defaults_and_is_deterministic():
    scene = scene_from_prompt("a crimson ball")
    assert attributes(scene) == (("circle", "red", "medium", "right", "normal"),)
    assert scene.background == "black" and scene == scene_from_prompt("a crimson ball")
    two = scene_from_prompt("a ball and a box")
    assert [o.colour for o in two.objects] == ["white", "red"]       # distinct default colours
    with pytest.raises(ValueError, match="object"):
        scene_from_prompt("nothing to see here")


# --- splits and dataset ----------------------------------------------------------------------------------
def test_heldout_scenes_never_produced_by_train_sampling():
    held = heldout_scenes()
    assert len(held) == 64 and held == heldout_scenes() and all(is_heldout(s) for s in held)
    keys = {split_key(s) for s in held}
    assert len(keys) == 64
    assert heldout_scenes(8) == held[:8]
    assert sum(is_heldout(s) for s in scenes(2000, seed=8)) > 50   # raw sampling does hit held-out keys...
    train = train_scenes(3000, seed=9)
    assert not any(is_heldout(s) or split_key(s) in keys for s in train)   # ...but training never does
    held_shorts = {short for short, _ in heldout_prompts()}
    assert not held_shorts & {short_caption(s) for s in train}
    assert train_scenes(10, seed=9) == train[:10]


def test_dataset_items_are_deterministic_training_clips():
    data = WorldDataset(WorldDataConfig(length=6, seed=3, num_frames=5, size=32, max_start_frame=40))
    video, short, detailed, scene = data[2]
    assert video.shape == (5, 3, 32, 32) and video.dtype == torch.float32
    assert -1 <= video.min() and video.max() <= 1
    again = data[2]
    assert torch.equal(video, again[0]) and (short, detailed, scene) == again[1:]
    assert not is_heldout(scene) and scene == data.scene(2)
    batch = collate_world([data[i] for i in range(3)])
    assert batch[0].shape == (3, 5, 3, 32, 32) and len(batch[1]) == len(batch[3]) == 3
    with pytest.raises(IndexError):
        data[6]


# --- files and CLI ---------------------------------------------------------------------------------------
def test_write_read_round_trip(tmp_path):
    written = scenes(3, seed=10)
    paths = write_clips(written, tmp_path / "clips", num_frames=9)
    assert [p.name for p in paths] == ["00000.mp4", "00001.mp4", "00002.mp4"]
    clips = read_clips(tmp_path / "clips")
    assert len(clips) == 3
    for clip, scene in zip(clips, written):
        assert clip.scene == scene
        assert clip.short == short_caption(scene) and clip.detailed == detailed_caption(scene)
        error = np.abs(clip.video.astype(int) - render(scene, 0, 9).astype(int))
        assert clip.video.shape == (9, 64, 64, 3) and error.mean() < 1.0 and error.max() <= 12
    assert sorted(p.name for p in (tmp_path / "clips").iterdir()) == [p.name for p in paths] + ["prompts.jsonl"]
    assert read_clips(tmp_path / "clips", load_videos=False)[1].video is None


def parse_cli(argv):
    parser = argparse.ArgumentParser(prog="selfforcing world")
    cli.add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_cli_render_writes_videos_and_prompts(tmp_path):
    out = tmp_path / "out"
    args = parse_cli(["render", "--n", "3", "-o", str(out), "--frames", "5", "--seed", "1", "--size", "32"])
    assert args.func is cli.run
    cli.run(args)
    lines = (out / "prompts.jsonl").read_text().splitlines()
    assert len(lines) == 3 and len(list(out.glob("*.mp4"))) == 3
    assert Scene.from_dict(json.loads(lines[0])["scene"]) == train_scenes(1, seed=1)[0]

    prompt_file = tmp_path / "prompts.txt"
    prompt_file.write_text("a crimson ball drifting to the left quickly\n\n# comment\nbig box bouncing\n")
    cli.run(parse_cli(["render", "--prompts", str(prompt_file), "-o", str(tmp_path / "p"), "--frames", "3"]))
    clips = read_clips(tmp_path / "p")
    assert [c.short for c in clips] == ["a crimson ball drifting to the left quickly", "big box bouncing"]
    assert attributes(clips[1].scene) == (("square", "white", "large", "bounce", "normal"),)
    assert clips[0].detailed == extend_prompt(clips[0].short)


def test_cli_bad_input_raises_value_error(tmp_path):
    with pytest.raises(ValueError, match="--n"):
        cli.run(parse_cli(["render", "--n", "0", "-o", str(tmp_path / "a")]))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    with pytest.raises(ValueError, match="no prompts"):
        cli.run(parse_cli(["render", "--prompts", str(empty), "-o", str(tmp_path / "b")]))
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ValueError, match="cannot write"):
        cli.run(parse_cli(["render", "--n", "1", "-o", str(blocker / "sub")]))
    unparseable = tmp_path / "bad.txt"
    unparseable.write_text("a red ball\nhello world\n")
    with pytest.raises(ValueError, match="prompt 2"):
        cli.run(parse_cli(["render", "--prompts", str(unparseable), "-o", str(tmp_path / "c")]))


def test_render_labels_mark_the_pixels_each_object_shows():
    """Label k + 1 where object k shows (its palette colour), 0 where the background does; later objects
    cover earlier ones; the attribute maps read each object's words; both follow the clip's start frame."""
    from selfforcing.world import LABEL_GROUPS, label_maps, render_labels
    from selfforcing.world.scene import Scene, WorldObject

    a = WorldObject("square", "red", "large", "right", "normal", x=0.4, y=0.5)
    b = WorldObject("circle", "blue", "small", "bounce", "fast", x=0.45, y=0.5)
    scene = Scene((a, b), background="grey")
    video = renderer.render(scene, 3, 5).astype(int)                      # (F, H, W, 3)
    labels = render_labels(scene, 3, 5)                                   # (F, H, W)
    assert labels.shape == video.shape[:3] and set(np.unique(labels)) == {0, 1, 2}
    for k, obj in enumerate((a, b)):
        colour = np.array(vocab.PALETTE[obj.colour])
        inside = np.abs(video[labels == k + 1] - colour).max(axis=1)
        assert np.median(inside) == 0 and inside.max() < 128              # only edge pixels are blended
    background = background_image("grey", 64)[None].repeat(5, 0)
    assert np.abs(video[labels == 0] - (background[labels == 0] * 255).round()).max(axis=1).mean() < 4
    assert np.array_equal(render_labels(scene, 0, 8)[3:], labels)         # a pure function of the frame
    maps = label_maps(scene, 3, 5)                                        # (F, G, H, W)
    assert maps.shape == (5, len(LABEL_GROUPS), 64, 64) and maps.dtype == torch.uint8
    for g, (attribute, words) in enumerate(LABEL_GROUPS.items()):
        for k, obj in enumerate((a, b)):
            assert (maps[:, g][torch.from_numpy(labels) == k + 1] == words.index(getattr(obj, attribute)) + 1).all()
        assert (maps[:, g][torch.from_numpy(labels) == 0] == 0).all()
    data = WorldDataset(WorldDataConfig(length=4, num_frames=6, max_start_frame=20))
    for i in range(4):
        video, *_, scene = data[i]
        objects = data.labels(i)[:, 1] > 0                                # (F, H, W): any colour class
        assert objects.shape == video.shape[:1] + video.shape[2:]
        assert ((video.amax(1) > 0.2) == objects).float().mean() > 0.97   # objects are the bright pixels
