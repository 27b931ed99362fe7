"""TeaCache's published rescaling polynomials (np.poly1d order, highest power first), per model
family: f(x) turns the relative L1 change of the indicator into an estimate of the output's.

Source: ali-vilab/TeaCache at commit 7c10efc (see the project's reference notes). The fits are
meaningful only inside each model's calibration range; outside it they can turn negative or
explode, which is why TeaCache(clamp=True) exists.
"""

PUBLISHED = {
    "flux": [4.98651651e+02, -2.83781631e+02, 5.58554382e+01, -3.82021401e+00, 2.64230861e-01],
    "hunyuan_video": [7.33226126e+02, -4.01131952e+02, 6.75869174e+01, -3.14987800e+00,
                      9.61237896e-02],
    "ltx_video": [2.14700694e+01, -1.28016453e+01, 2.31279151e+00, 7.92487521e-01, 9.69274326e-03],
    "mochi": [-3.51241319e+03, 8.11675948e+02, -6.09400215e+01, 2.42429681e+00, 3.05291719e-03],
    "cogvideox": [-1.53880483e+03, 8.43202495e+02, -1.34363087e+02, 7.97131516e+00,
                  -5.23162339e-02],
    # Wan2.1 T2V, indicator e0 (the timestep projection; the published --use_ret_steps mode).
    "wan_t2v_1.3b_e0": [-5.21862437e+04, 9.23041404e+03, -5.28275948e+02, 1.36987616e+01,
                        -4.99875664e-02],
    "wan_t2v_14b_e0": [-3.03318725e+05, 4.90537029e+04, -2.65530556e+03, 5.87365115e+01,
                       -3.15583525e-01],
    # HiDream-I1-Full, indicator the timestep embedding (TeaCache4HiDream-I1; published
    # setting: the first tenth of the steps computed, the last not forced).
    "hidream": [-3.13605009e+04, -7.12425503e+02, 4.91363285e+01, 8.26515490e+00,
                1.08053901e-01],
    # Lumina-Image 2.0 (TeaCache4Lumina2's default fit): layer 0's modulated joint sequence,
    # the indicator cachekern computes for the family.
    "lumina2": [393.76566581, -603.50993606, 209.10239044, -23.00726601, 0.86377344],
}


def evaluate(coefficients, x: float) -> float:
    """Horner's rule in float64, as np.poly1d evaluates it on the host."""
    y = 0.0
    for c in coefficients:
        y = y * x + float(c)
    return y
