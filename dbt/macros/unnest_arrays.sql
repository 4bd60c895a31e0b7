{#- One row per position of parallel arrays (same length, row by row) of `relation`: the `carried` columns,
    then each array's element at that position as `alias`. `arrays` is a list of
    (array column, alias, element type). -#}
{% macro unnest_arrays(relation, carried, arrays) -%}
    {{ return(adapter.dispatch('unnest_arrays', 'postmodern')(relation, carried, arrays)) }}
{%- endmacro %}

{% macro default__unnest_arrays(relation, carried, arrays) -%}
    select
        {%- for column in carried %} unnested.{{ column }},{% endfor %}
        {%- for array, alias, type in arrays %}
        cast(unnest(unnested.{{ array }}) as {{ type }}) as {{ alias }}{{ "," if not loop.last }}
        {%- endfor %}
    from {{ relation }} as unnested
{%- endmacro %}

{% macro snowflake__unnest_arrays(relation, carried, arrays) -%}
    select
        {%- for column in carried %} unnested.{{ column }},{% endfor %}
        {%- for array, alias, type in arrays %}
        unnested.{{ array }}[position.index]::{{ type }} as {{ alias }}{{ "," if not loop.last }}
        {%- endfor %}
    from {{ relation }} as unnested, lateral flatten(input => unnested.{{ arrays[0][0] }}) as position
{%- endmacro %}
