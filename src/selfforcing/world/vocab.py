"""The synthetic world's attribute vocabularies and their physical meaning.

Every discrete attribute a caption can name lives here, together with the number that gives it a meaning
on screen: palette RGB values, circumradii, speeds, background colours. Nothing here depends on the frame
size: lengths are in *frame units* (1.0 = the frame's width), times in seconds.

Coordinates: ``x`` grows to the right and ``y`` grows *downwards* (image rows), ``(0, 0)`` is the top-left
corner, so "up" means decreasing ``y`` and a positive rotation angle turns a shape clockwise on screen.
"""

import math

FPS = 16                  # frames per second of every clip (the real-scale Wan2.1 path also runs at 16 fps)
FRAME_SIZE = 64           # default height = width in pixels
CLIP_FRAMES = 33          # default clip length (2 s at 16 fps plus the first frame, as Wan's 4k + 1 rule)
MAX_OBJECTS = 3

# --- shapes -----------------------------------------------------------------------------------------------
SHAPES = ("circle", "square", "triangle", "diamond", "cross", "ring")
# Shapes that look the same at every angle: spinning them would be invisible, so sampling never asks for it.
ROTATION_SYMMETRIC = frozenset({"circle", "ring"})

# Each shape fits in the disc of radius r (its circumradius, the object's `radius`) around its centre, so a
# spinning object never reaches further than r.  The numbers below are the shapes' proportions in units of r.
SQUARE_HALF_SIDE = 1 / math.sqrt(2)
DIAMOND_HALF_WIDTH = 0.7          # the diamond is taller than wide, so it is not just a rotated square
CROSS_HALF_THICKNESS = 0.3
CROSS_HALF_LENGTH = math.sqrt(1 - CROSS_HALF_THICKNESS**2)
RING_INNER = 0.5                  # inner radius of the ring's hole
TRIANGLE_INRADIUS = 0.5           # equilateral triangle centred on its centroid, pointing up

# Axis-aligned extent at angle 0 as (left, right, top, bottom) distances from the centre, in units of r;
# used to keep bouncing and placed objects inside the frame.
SHAPE_EXTENT = {
    "circle": (1.0, 1.0, 1.0, 1.0),
    "ring": (1.0, 1.0, 1.0, 1.0),
    "square": (SQUARE_HALF_SIDE,) * 4,
    "diamond": (DIAMOND_HALF_WIDTH, DIAMOND_HALF_WIDTH, 1.0, 1.0),
    "cross": (CROSS_HALF_LENGTH,) * 4,
    "triangle": (math.sqrt(3) / 2, math.sqrt(3) / 2, 1.0, TRIANGLE_INRADIUS),
}

# --- colours ----------------------------------------------------------------------------------------------
# Saturated or bright colours, more than 100 RGB units from each other and 150 from every background pixel
# (tests/test_world.py checks both margins), so an evaluator can segment objects by colour alone.
PALETTE = {
    "red": (225, 25, 35),
    "green": (50, 215, 70),
    "blue": (40, 100, 255),
    "yellow": (240, 230, 30),
    "cyan": (40, 225, 235),
    "magenta": (225, 50, 225),
    "orange": (255, 125, 0),
    "white": (245, 245, 245),
}
COLOURS = tuple(PALETTE)

# --- sizes ------------------------------------------------------------------------------------------------
SIZES = ("small", "medium", "large")
SIZE_RADIUS = {"small": 0.08, "medium": 0.12, "large": 0.18}   # circumradius r, frame units (x1.5 apart)

# --- motions and speeds -----------------------------------------------------------------------------------
# Linear motions wrap around the frame (leave right, re-enter left) so they keep their direction forever;
# every other motion stays inside the frame by construction.
DIRECTIONS = {                      # unit-free heading (dx, dy), y down
    "right": (1, 0), "left": (-1, 0), "up": (0, -1), "down": (0, 1),
    "up_right": (1, -1), "up_left": (-1, -1), "down_right": (1, 1), "down_left": (-1, 1),
}
LINEAR_MOTIONS = tuple(DIRECTIONS)
MOTIONS = LINEAR_MOTIONS + ("bounce", "spin", "pulse", "orbit")

SPEEDS = ("slow", "normal", "fast")
SPEED_FACTOR = {"slow": 0.5, "normal": 1.0, "fast": 2.0}
LINEAR_SPEED = 0.2        # frame units per second at normal speed (0.8 px/frame at 64 px, 16 fps)
BOUNCE_SPEED = 0.25       # frame units per second at normal speed
SPIN_RATE = 0.25          # revolutions per second at normal speed, clockwise
ORBIT_RATE = 0.2          # revolutions per second at normal speed, clockwise
ORBIT_RADIUS = 0.18       # radius of the orbit's path, frame units
PULSE_RATE = 0.5          # grow-shrink cycles per second at normal speed
PULSE_AMPLITUDE = 0.3     # the radius swings between (1 - A) r and (1 + A) r

# --- backgrounds ------------------------------------------------------------------------------------------
# All dark and low-saturation (every channel <= 64), so any palette colour stands out against them.
BACKGROUNDS = ("black", "grey", "navy", "gradient", "checker", "stripes")
BACKGROUND_COLOURS = {
    "black": ((0, 0, 0),),
    "grey": ((48, 48, 52),),
    "navy": ((14, 22, 64),),
    "gradient": ((10, 12, 40), (52, 18, 60)),     # top -> bottom: dark blue to dark purple
    "checker": ((26, 26, 26), (58, 58, 58)),
    "stripes": ((22, 26, 34), (50, 54, 62)),      # horizontal stripes
}
PATTERN_CELLS = 8         # checker cells / stripes per frame side
